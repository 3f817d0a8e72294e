"""A scored rollout as training tensors, and the forward passes over them.

Layout: right-padded prompt+completion sequences `tokens` [n, L]; every per-position
tensor is [n, L-1] where position j scores tokens[:, j + 1], and `mask` is 1 where
that token is a completion token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from echo_nemo.model.forward import causal_forward
from echo_nemo.model.generate import Rollout
from echo_nemo.parallel import gather_logits
from echo_nemo.rl.losses import entropy_from_logits, token_logprobs


@dataclass
class Experience:
    """What the advantage and update phases read. Filled in phase by phase:

    - build_experience: tokens, mask, rewards (the scorer's sequence rewards)
    - the log-prob phase: old_logprobs, ref_logprobs, and kl_penalty when the KL term
      goes into the reward (coef * k1 per completion token, computed once, in rl/loop.py)
    - the algorithm's advantages: advantages (+ values / returns for PPO)
    """

    tokens: torch.Tensor  # [n, L]
    mask: torch.Tensor  # [n, L-1] float
    rewards: torch.Tensor  # [n] sequence rewards from the scorer
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    kl_penalty: torch.Tensor | None = None  # [n, L-1], subtracted from the reward
    advantages: torch.Tensor | None = None  # [n, L-1]
    returns: torch.Tensor | None = None
    values: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)  # phase metrics to log with the step
    # rows with the same prompt_groups entry share their first prompt_lens tokens (a GRPO
    # group: consecutive samples of one prompt); the policy's passes compute them once
    prompt_lens: torch.Tensor | None = None  # [n]
    prompt_groups: torch.Tensor | None = None  # [n]

    def __len__(self) -> int:
        return self.tokens.size(0)

    def sequence_rewards(self) -> torch.Tensor:
        """R_i - sum_t kl_penalty_it: a sample's reward with the KL penalty, [n]."""
        if self.kl_penalty is None:
            return self.rewards
        return self.rewards - self.kl_penalty.sum(-1)

    def token_rewards(self) -> torch.Tensor:
        """r_it = R_i at the sample's last completion token, minus kl_penalty_it: [n, L-1]."""
        out = torch.zeros_like(self.mask)
        last = self.mask.cumsum(-1).argmax(-1)  # index of each sample's last completion token
        out[torch.arange(len(self)), last] = self.rewards
        return out if self.kl_penalty is None else out - self.kl_penalty


def build_experience(rollout: Rollout, rewards: list[float], pad_id: int, device: torch.device) -> Experience:
    """Right-padded prompt+completion tokens, the completion mask, the rewards, and which
    consecutive rows share a prompt."""
    lengths = [len(p) + len(c) for p, c in zip(rollout.prompt_ids, rollout.completion_ids)]
    n, seq = len(lengths), max(lengths)
    tokens = torch.full((n, seq), pad_id, dtype=torch.long)
    mask = torch.zeros((n, seq - 1), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(rollout.prompt_ids, rollout.completion_ids)):
        tokens[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        mask[i, len(p) - 1 : len(p) - 1 + len(c)] = 1.0
    groups = [0]
    for prev, p in zip(rollout.prompt_ids, rollout.prompt_ids[1:]):
        groups.append(groups[-1] + (p != prev))
    return Experience(tokens.to(device), mask.to(device), torch.tensor(rewards, dtype=torch.float32, device=device),
                      prompt_lens=torch.tensor([len(p) for p in rollout.prompt_ids], dtype=torch.long),
                      prompt_groups=torch.tensor(groups[:n], dtype=torch.long))


def sequence_logprobs(
    model, tokens: torch.Tensor, temperature: float = 1.0, vocab_size: int | None = None, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(tokens[:, j+1] | tokens[:, :j+1]) for every j: [n, L-1], and optionally the entropy.

    Logits are divided by the sampling temperature so the ratio compares the same
    distribution the rollout sampled from. Vocabulary padding entries are dropped.
    """
    logits = gather_logits(causal_forward(model, tokens))[:, :-1]
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    logits = logits.float() / temperature
    lp = token_logprobs(logits, tokens[:, 1:])
    ent = entropy_from_logits(logits) if with_entropy else None
    return lp, ent


def micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def length_batches(mask: torch.Tensor, size: int) -> list[tuple[torch.Tensor, int]]:
    """Micro-batches of rows of similar length, each cut to its longest row: [(rows, width)].

    `tokens[rows, :width]` holds every real token of those rows and `mask[rows, :width - 1]`
    every completion label. Rollout lengths vary several-fold (prompts up to
    max_prompt_tokens, completions from a few tokens to max_new_tokens), so padding every
    row to the batch maximum wastes a large share of the forward and backward passes;
    causal attention makes the cut exact (no position sees the padding after it).
    """
    n = mask.size(0)
    if n == 0:
        return []
    # a row's length: its last completion label position + 2 (labels are shifted by one)
    ends = (mask > 0).cumsum(-1).argmax(-1) + 2
    order = torch.argsort(ends, stable=True)
    out = []
    for i in range(0, n, size):
        rows = order[i : i + size]
        out.append((rows, min(int(ends[rows].max()), mask.size(1) + 1)))
    return out
