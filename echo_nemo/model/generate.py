"""Batched sampling on the megatron-core GPTModel with a KV cache.

The model runs through echo_nemo.model.decode's `Decoder` (prefill / step / keep over the
model's own parameters). tests/model/reference_megatron.py keeps megatron's own static-batching
inference behind the same interface; the two give the same tokens for the same seed up to
float rounding (tested).

Prompts of different lengths end at the same cache column (left-padding layout), so every
sequence's next token sits in one column; pad columns are masked. RoPE depends only on
the distance between query and key, so a padded prompt scores like the same prompt alone
(tested). Sampling draws one uniform number per cache row and step (`sample_categorical`),
and rows are dropped from the batch and the cache once at least 1/8 of them have finished,
so any decoder behind the interface consumes the generator identically.

Tensor parallelism: logits are gathered over the vocab-parallel shards, every TP rank
samples with the same seeded generator, and TP rank 0's tokens are broadcast so all ranks
keep identical sequences even if a float differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from echo_nemo.model.decode import Decoder
from echo_nemo.parallel import broadcast_tensor_tp


@dataclass
class Rollout:
    """Samples for a list of prompts (one entry per prompt, in order).

    completion_ids end with EOS when the sequence stopped; `completions` are decoded
    without it. `logprobs[i][t]` is log p(completion_ids[i][t] | prefix) under the
    distribution sampled from (logits / temperature, before top-k / top-p truncation;
    temperature 1 for greedy).
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    completions: list[str]
    logprobs: list[torch.Tensor]
    finished: list[bool]
    num_tokens: int = field(default=0)  # completion tokens generated (for throughput)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then nucleus (top-p) truncation: removed entries become -inf.

    top-p keeps the smallest set of highest-probability tokens whose cumulative
    probability reaches top_p (the token that crosses the threshold is kept).
    """
    if top_k and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # mass strictly before each token: a token is dropped when that already reaches top_p
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row drawn from the row's distribution, by inverting its CDF.

    i = the first index with cdf[i] > u * cdf[-1], u ~ U[0, 1): entries of probability 0
    are never drawn. One uniform number per row instead of `torch.multinomial`'s one
    exponential per vocabulary entry, whose CPU generator costs ~12% of decode time.
    """
    cdf = probs.double().cumsum(-1)  # float64: u * total never rounds up to the total
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.size(-1) - 1)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@dataclass
class _Sampling:
    """How the next token is picked from a step's logits."""

    eos_id: int
    vocab_size: int
    temperature: float
    top_p: float
    top_k: int
    greedy: bool
    min_new_tokens: int
    generator: torch.Generator | None

    def pick(self, logits: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(next token per cache row, log-probs of the distribution sampled from) at step t."""
        logits = logits[:, : self.vocab_size].float()  # drop the vocab padding entries
        if t < self.min_new_tokens:
            logits[:, self.eos_id] = float("-inf")  # EOS may not end a sequence yet
        if self.greedy:
            return logits.argmax(-1), torch.log_softmax(logits, -1)
        scaled = logits / self.temperature
        logp = torch.log_softmax(scaled, -1)
        probs = torch.softmax(filter_logits(scaled, self.top_k, self.top_p), -1)
        return sample_categorical(probs, self.generator), logp  # one uniform per cache row


class _Completions:
    """The tokens and log-probs written so far, per original row, and which cache rows still
    generate (`rows`: the original index of each cache row)."""

    def __init__(self, b: int, max_new_tokens: int, eos_id: int, dev: torch.device) -> None:
        self.eos_id = eos_id
        self.tokens = torch.full((b, max_new_tokens), eos_id, dtype=torch.long, device=dev)
        self.logprobs = torch.zeros((b, max_new_tokens), dtype=torch.float32, device=dev)
        self.lengths = torch.full((b,), max_new_tokens, dtype=torch.long, device=dev)
        self.done = torch.zeros(b, dtype=torch.bool, device=dev)
        self.rows = torch.arange(b, device=dev)
        self.alive = torch.ones(b, dtype=torch.bool, device=dev)

    def record(self, t: int, nxt: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """Write step t's tokens of the live rows; finished rows feed EOS. Returns the tokens fed next."""
        rows, alive = self.rows, self.alive
        nxt = torch.where(alive, nxt, torch.full_like(nxt, self.eos_id))
        self.tokens[rows[alive], t] = nxt[alive]
        self.logprobs[rows[alive], t] = logp.gather(-1, nxt[:, None]).squeeze(-1)[alive]
        newly = alive & (nxt == self.eos_id)
        self.lengths[rows[newly]] = t + 1
        self.done[rows[newly]] = True
        self.alive = alive & ~newly
        return nxt

    def shrink(self, decoder: Decoder, nxt: torch.Tensor) -> torch.Tensor:
        """Once at least 1/8 of the cache rows have finished, drop them from the batch and the
        KV cache, so the remaining decode steps (whose cost grows with batch x length) skip them."""
        if int((~self.alive).sum()) < max(1, self.rows.numel() // 8):
            return nxt
        keep = self.alive.nonzero().squeeze(1)
        decoder.keep(keep)
        self.rows, self.alive = self.rows[keep], self.alive[keep]
        return nxt[keep]

    def results(self) -> tuple[list[list[int]], list[torch.Tensor], list[bool]]:
        n = self.lengths.tolist()
        return ([self.tokens[i, : n[i]].tolist() for i in range(len(n))],
                [self.logprobs[i, : n[i]].cpu() for i in range(len(n))],
                [bool(d) for d in self.done])


@torch.no_grad()
def _generate_batch(model, prompts: list[list[int]], max_new_tokens: int,
                    sampling: _Sampling) -> tuple[list[list[int]], list[torch.Tensor], list[bool]]:
    """Prefill, then one decode step per new token until every row has stopped."""
    b = len(prompts)
    decoder = Decoder(model, b, max(map(len, prompts)) + max_new_tokens)
    out = _Completions(b, max_new_tokens, sampling.eos_id, _device(model))
    # inference mode skips autograd's per-op bookkeeping (~6% of a 150m decode step)
    with torch.inference_mode():
        logits = decoder.prefill(prompts)
        for t in range(max_new_tokens):
            nxt, logp = sampling.pick(logits, t)
            nxt = out.record(t, broadcast_tensor_tp(nxt), logp)  # TP rank 0's tokens on every rank
            if not bool(out.alive.any()) or t + 1 == max_new_tokens:
                break
            logits = decoder.step(out.shrink(decoder, nxt))
    return out.results()


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    seed: int | None = None,
    batch_size: int | None = None,
    max_prompt_tokens: int | None = None,
    min_new_tokens: int = 0,
) -> Rollout:
    """Sample one completion per prompt (repeat a prompt in the list for several).

    Sequences stop at EOS or after `max_new_tokens`. Prompts longer than
    `max_prompt_tokens` keep their last tokens. Deterministic for a given `seed`
    (per batch, so results do not depend on what else ran before). The model is put in
    eval mode for the call and restored after. `min_new_tokens`: EOS is masked out for
    each sequence's first that many tokens (as transformers' option of the name; benchmarks
    use it to time the same number of tokens as `generate`).
    """
    if not greedy and temperature <= 0:
        raise ValueError("temperature must be > 0 when sampling (use greedy=True instead)")
    ids = [tokenizer.encode(p) for p in prompts]
    if max_prompt_tokens:
        ids = [p[-max_prompt_tokens:] for p in ids]
    ids = [p if p else [tokenizer.eos_id] for p in ids]  # an empty prompt starts from EOS
    bs = batch_size or len(ids) or 1
    was_training = model.training
    model.eval()
    generator = None
    out = Rollout([], [], [], [], [], 0)
    try:
        for start in range(0, len(ids), bs):
            chunk = ids[start : start + bs]
            if not greedy:
                generator = torch.Generator(device=_device(model))
                # no seed: draw one from the global RNG (never re-seed it)
                base = seed if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)))
                generator.manual_seed(base + start)
            sampling = _Sampling(tokenizer.eos_id, tokenizer.vocab_size, temperature, top_p, top_k, greedy,
                                 min_new_tokens, generator)
            comp, lps, fin = _generate_batch(model, chunk, max_new_tokens, sampling)
            out.prompt_ids.extend(chunk)
            out.completion_ids.extend(comp)
            out.logprobs.extend(lps)
            out.finished.extend(fin)
            out.num_tokens += sum(len(c) for c in comp)
    finally:
        model.train(was_training)
    eos = tokenizer.eos_id
    out.completions = [tokenizer.decode([t for t in c if t != eos]) for c in out.completion_ids]
    return out
