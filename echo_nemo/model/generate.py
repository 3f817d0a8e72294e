"""Batched sampling on the megatron-core GPTModel with a KV cache.

Two decoders behind one prefill / step / keep interface, both over the model's own
parameters: `LeanDecoder` (echo_nemo.model.decode, the default: plain torch ops, a
preallocated cache, prompts packed without padding for prefill) and
`MegatronStaticDecoder` (megatron's `StaticInferenceContext`, the previous sampler, kept
as the reference and as the fallback for architectures the lean path does not cover).
They give the same tokens for the same seed up to float rounding (tested).

Prompts of different lengths end at the same cache column (left-padding layout), so every
sequence's next token sits in one column; pad columns are masked. RoPE depends only on
the distance between query and key, so a padded prompt scores like the same prompt alone
(tested). Sampling draws one uniform number per cache row and step (`sample_categorical`),
and rows are dropped from the batch and the cache once at least 1/8 of them have finished:
both decoders consume the generator identically.

Tensor parallelism: logits are gathered over the vocab-parallel shards, every TP rank
samples with the same seeded generator, and TP rank 0's tokens are broadcast so all ranks
keep identical sequences even if a float differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
    exponential per vocabulary entry, whose CPU generator was ~12% of decode time.
    """
    cdf = probs.double().cumsum(-1)  # float64: u * total never rounds up to the total
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.size(-1) - 1)


def _tp_group():
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized() and ps.get_tensor_model_parallel_world_size() > 1:
        return ps.get_tensor_model_parallel_group()
    return None


def _broadcast_from_tp0(t: torch.Tensor) -> torch.Tensor:
    group = _tp_group()
    if group is None:
        return t
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    dist.broadcast(t, src=ps.get_tensor_model_parallel_src_rank(), group=group)
    return t


def _device(model) -> torch.device:
    return next(model.parameters()).device


class MegatronStaticDecoder:
    """megatron's own static-batching inference (`StaticInferenceContext`), behind the
    same prefill / step / keep interface as `LeanDecoder`: the reference the lean path is
    tested against, and a fallback for architectures the lean path does not cover."""

    def __init__(self, model, batch: int, max_len: int) -> None:
        from megatron.core.inference.contexts import StaticInferenceContext

        from echo_nemo.distributed import patch_static_kv_rope

        patch_static_kv_rope()  # rotate each key once, not the whole cache every step
        self.model = model
        self.dev = _device(model)
        self.ctx = StaticInferenceContext(max_batch_size=batch, max_sequence_length=max_len)
        self.valid = torch.zeros((batch, max_len), dtype=torch.bool, device=self.dev)  # real tokens
        self.pos = 0

    def _forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(self.pos, self.pos + tokens.size(1), device=self.dev).expand(tokens.size(0), -1)
        logits = self.model(tokens, positions, attention_mask=mask, inference_context=self.ctx,
                            runtime_gather_output=True)
        self.ctx.increment_sequence_len_offset(tokens.size(1))
        self.pos += tokens.size(1)
        return logits[:, -1]

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Left-padded prompts in one forward; pad keys masked (True = masked)."""
        b, plen = len(prompts), max(map(len, prompts))
        tokens = torch.zeros((b, plen), dtype=torch.long, device=self.dev)  # pads: any id, masked
        for i, p in enumerate(prompts):
            tokens[i, plen - len(p) :] = torch.tensor(p, dtype=torch.long)
            self.valid[i, plen - len(p) : plen] = True
        causal = torch.triu(torch.ones(plen, plen, dtype=torch.bool, device=self.dev), diagonal=1)
        return self._forward(tokens, causal[None, None] | ~self.valid[:, None, None, :plen])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.valid[:, self.pos] = True
        mask = ~self.valid[:, None, None, : self.pos + 1]
        self.ctx.enable_decode_mode()
        return self._forward(tokens[:, None], mask)

    def keep(self, rows: torch.Tensor) -> None:
        self.ctx.key_value_memory_dict = {
            layer: (k[:, rows], v[:, rows]) for layer, (k, v) in self.ctx.key_value_memory_dict.items()
        }
        self.valid = self.valid[rows]


ENGINES = ("lean", "megatron")


@torch.no_grad()
def _generate_batch(
    model,
    prompts: list[list[int]],
    *,
    eos_id: int,
    vocab_size: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    greedy: bool,
    generator: torch.Generator | None,
    engine: str = "lean",
    min_new_tokens: int = 0,
) -> tuple[list[list[int]], list[torch.Tensor], list[bool]]:
    from echo_nemo.model import lean
    from echo_nemo.model.decode import LeanDecoder

    dev = _device(model)
    b = len(prompts)
    total = max(map(len, prompts)) + max_new_tokens
    lean_ok = engine == "lean" and lean.supports(model)
    decoder = (LeanDecoder if lean_ok else MegatronStaticDecoder)(model, b, total)
    out_tokens = torch.full((b, max_new_tokens), eos_id, dtype=torch.long, device=dev)
    out_logprobs = torch.zeros((b, max_new_tokens), dtype=torch.float32, device=dev)
    lengths = torch.full((b,), max_new_tokens, dtype=torch.long, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)

    rows = torch.arange(b, device=dev)  # the original index of each cache row
    alive = torch.ones(b, dtype=torch.bool, device=dev)  # per cache row: still generating
    # inference mode skips autograd's per-op bookkeeping (~6% of a 150m decode step); not
    # for megatron's engine, whose rotary tables are cached and later reused in training
    with torch.inference_mode(lean_ok):
        logits = decoder.prefill(prompts)
        for t in range(max_new_tokens):
            logits = logits[:, :vocab_size].float()  # drop the vocab padding entries
            if t < min_new_tokens:
                logits[:, eos_id] = float("-inf")  # EOS may not end a sequence yet
            if greedy:
                nxt = logits.argmax(-1)
                logp = torch.log_softmax(logits, -1)
            else:
                scaled = logits / temperature
                logp = torch.log_softmax(scaled, -1)
                probs = torch.softmax(filter_logits(scaled, top_k, top_p), -1)
                nxt = sample_categorical(probs, generator)  # one uniform per cache row
            nxt = _broadcast_from_tp0(nxt)
            nxt = torch.where(alive, nxt, torch.full_like(nxt, eos_id))  # finished rows feed EOS
            out_tokens[rows[alive], t] = nxt[alive]
            out_logprobs[rows[alive], t] = logp.gather(-1, nxt[:, None]).squeeze(-1)[alive]
            newly = alive & (nxt == eos_id)
            lengths[rows[newly]] = t + 1
            done[rows[newly]] = True
            alive &= ~newly
            if not bool(alive.any()) or t + 1 == max_new_tokens:
                break
            if int((~alive).sum()) >= max(1, rows.numel() // 8):
                # drop finished sequences from the batch and the KV cache, so the remaining
                # decode steps (whose cost grows with batch x length) skip them
                keep = alive.nonzero().squeeze(1)
                decoder.keep(keep)
                rows, alive, nxt = rows[keep], alive[keep], nxt[keep]
            logits = decoder.step(nxt)

    completions, logprobs, finished = [], [], []
    for i in range(b):
        n = int(lengths[i])
        completions.append(out_tokens[i, :n].tolist())
        logprobs.append(out_logprobs[i, :n].cpu())
        finished.append(bool(done[i]))
    return completions, logprobs, finished


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
    engine: str = "lean",
    min_new_tokens: int = 0,
) -> Rollout:
    """Sample one completion per prompt (repeat a prompt in the list for several).

    Sequences stop at EOS or after `max_new_tokens`. Prompts longer than
    `max_prompt_tokens` keep their last tokens. Deterministic for a given `seed`
    (per batch, so results do not depend on what else ran before). The model is put in
    eval mode for the call and restored after. `engine`: "lean" (echo_nemo.model.decode,
    the default) or "megatron" (megatron's static-batching inference; same tokens up to
    float rounding, slower). `min_new_tokens`: EOS is masked out for each sequence's first
    that many tokens (as transformers' option of the name; benchmarks use it to time the
    same number of tokens as `generate`).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
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
            comp, lps, fin = _generate_batch(
                model, chunk, eos_id=tokenizer.eos_id, vocab_size=tokenizer.vocab_size, max_new_tokens=max_new_tokens,
                temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy,
                generator=generator, engine=engine, min_new_tokens=min_new_tokens,
            )
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


@torch.no_grad()
def greedy_no_cache(model, prompt_ids: list[int], max_new_tokens: int, eos_id: int, vocab_size: int) -> list[int]:
    """Reference decoder: re-run the full sequence every step and take the argmax.

    Slow on purpose (no cache, no batching); the KV-cache path must match it token
    for token.
    """
    from echo_nemo.model.build import causal_forward

    dev = _device(model)
    seq = list(prompt_ids)
    out: list[int] = []
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            tokens = torch.tensor([seq], dtype=torch.long, device=dev)
            logits = gather_logits(causal_forward(model, tokens))
            nxt = int(logits[0, -1, :vocab_size].argmax())
            out.append(nxt)
            seq.append(nxt)
            if nxt == eos_id:
                break
    finally:
        model.train(was_training)
    return out


def gather_logits(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits from vocab-parallel ones (identity at TP=1); differentiable."""
    if _tp_group() is None:
        return logits
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    return gather_from_tensor_model_parallel_region(logits)
