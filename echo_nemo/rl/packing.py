"""The policy's forward passes over an experience with each shared prompt computed once.

A GRPO group is k samples of one prompt, so a padded [n, L] batch runs every prompt token
through the model k times (a third of the tokens at echo-lab's ~30-token prompts and 64
new tokens). Here a micro-batch is packed (echo_nemo.model.forward.Packing): each prompt's
tokens once, then each sample's completion tokens, no padding; attention runs per sample
over its prompt's and its own tokens. Log-probs and entropies equal the padded forward's
to float rounding (tested) and come back in the experience's [rows, width - 1] layout,
zero where the mask is.

A sample's last token is left out: its logits would score the token after the sequence,
which no label does (causal attention: no other position reads it).
"""

from __future__ import annotations

import torch

from echo_nemo.model.forward import Packing, packed_forward
from echo_nemo.parallel import gather_logits
from echo_nemo.rl.experience import Experience
from echo_nemo.rl.losses import entropy_from_logits, token_logprobs


def prefix_batches(exp: Experience, size: int) -> list[tuple[torch.Tensor, int]]:
    """Micro-batches of `size` consecutive rows (a prompt's samples are consecutive, so a
    micro-batch computes a shared prompt once), each with the width that holds its labels:
    [(rows, width)] as echo_nemo.rl.experience.length_batches gives them."""
    n = len(exp)
    ends = (exp.mask > 0).cumsum(-1).argmax(-1) + 2  # last label position + 2
    out = []
    for i in range(0, n, size):
        rows = torch.arange(i, min(i + size, n), device=exp.mask.device)
        out.append((rows, min(int(ends[rows].max()), exp.mask.size(1) + 1)))
    return out


def pack(exp: Experience, rows: torch.Tensor) -> tuple[Packing, torch.Tensor, torch.Tensor, tuple]:
    """(packing, packed row of each label, its target token, its (row, column) in the
    [len(rows), width - 1] layout) for the experience rows `rows`."""
    tokens, mask = exp.tokens[rows].tolist(), exp.mask[rows].cpu()
    plens, groups = exp.prompt_lens[rows].tolist(), exp.prompt_groups[rows].tolist()
    flat: list[int] = []
    positions: list[int] = []
    owner: list[tuple[int, int]] = []  # per packed row: (sequence, position) it takes its output from
    seqs: list[list[int]] = []
    label_rows, targets, dest_r, dest_c = [], [], [], []
    prefix: tuple[int, list[int]] | None = None  # (prompt group, its packed rows)
    for m, (toks, p) in enumerate(zip(tokens, plens)):
        cols = mask[m].nonzero().squeeze(1).tolist()
        end = max(cols[-1] + 1 if cols else 0, p)  # the sequence's tokens: 0 .. end - 1
        if prefix is None or prefix[0] != groups[m]:
            prefix = (groups[m], list(range(len(flat), len(flat) + p)))
            flat += toks[:p]
            positions += range(p)
            owner += [(len(seqs), t) for t in range(p)]
        own = list(range(len(flat), len(flat) + end - p))
        flat += toks[p:end]
        positions += range(p, end)
        owner += [(len(seqs), t) for t in range(p, end)]
        seq = prefix[1] + own
        for j in cols:
            label_rows.append(seq[j])
            targets.append(toks[j + 1])
            dest_r.append(m)
            dest_c.append(j)
        seqs.append(seq)
    length = max(map(len, seqs))
    gather = [r for seq in seqs for r in seq + [0] * (length - len(seq))]
    dev = exp.tokens.device

    def t(x):
        return torch.tensor(x, dtype=torch.long, device=dev)

    packing = Packing(t(flat), t(positions), t(gather), t([s * length + j for s, j in owner]), len(seqs), length)
    return packing, t(label_rows), t(targets), (t(dest_r), t(dest_c))


def packed_logprobs(model, exp: Experience, rows: torch.Tensor, width: int, temperature: float = 1.0,
                    vocab_size: int | None = None, with_entropy: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(tokens[r, j+1] | tokens[r, :j+1]) at every label (r in rows, j < width - 1) of
    the experience, [len(rows), width - 1], zero off the mask; and optionally the entropy.

    Logits are divided by the sampling temperature, vocabulary padding dropped, as in
    echo_nemo.rl.experience.sequence_logprobs.
    """
    packing, label_rows, targets, dest = pack(exp, rows)
    logits = gather_logits(packed_forward(model, packing, label_rows))
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    logits = logits.float() / temperature
    zeros = torch.zeros(len(rows), width - 1, dtype=torch.float32, device=logits.device)
    lp = zeros.index_put(dest, token_logprobs(logits, targets))
    ent = zeros.index_put(dest, entropy_from_logits(logits)) if with_entropy else None
    return lp, ent
