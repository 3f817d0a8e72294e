"""megatron-core's own paths through the GPT, kept as references for the equivalence tests.

The package runs one training forward (echo_nemo.model.forward) and one decoder
(echo_nemo.model.decode); these are what they are tested against:

- `megatron_forward`: megatron's module stack and its loss (vocab-parallel cross entropy);
- `MegatronStaticDecoder`: megatron's static-batching inference (`StaticInferenceContext`)
  behind the decoder's prefill / step / keep interface, so `generate` can run on it
  (`megatron_decoding`);
- `greedy_no_cache`: re-run the full sequence every step and take the argmax.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from echo_nemo.model import generate as generate_module
from echo_nemo.model.forward import causal_forward, mask_padded_vocab
from echo_nemo.parallel import gather_logits


def megatron_forward(model, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                     vocab_size: int | None = None) -> torch.Tensor:
    """`causal_forward` through megatron's own forward and loss."""
    b, s = tokens.shape
    position_ids = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
    if vocab_size is None and labels is not None:
        return model(tokens, position_ids, attention_mask=None, labels=labels)
    logits = model(tokens, position_ids, attention_mask=None)
    if vocab_size is not None:
        logits = mask_padded_vocab(logits, vocab_size, getattr(getattr(model, "module", model), "parallel_output", True))
    if labels is None:
        return logits
    return vocab_parallel_cross_entropy(logits.float(), labels)


def _outside_inference_mode(method):
    """megatron caches its rotary tables and KV buffers, which later training forwards reuse:
    they must not be inference tensors (generate decodes under torch.inference_mode)."""

    @functools.wraps(method)
    def run(*args, **kwargs):
        with torch.inference_mode(False):
            return method(*args, **kwargs)

    return run


class MegatronStaticDecoder:
    """megatron's static-batching inference behind `Decoder`'s prefill / step / keep."""

    def __init__(self, model, batch: int, max_len: int) -> None:
        self.model = model
        self.dev = next(model.parameters()).device
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

    @_outside_inference_mode
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Left-padded prompts in one forward; pad keys masked (True = masked)."""
        b, plen = len(prompts), max(map(len, prompts))
        tokens = torch.zeros((b, plen), dtype=torch.long, device=self.dev)  # pads: any id, masked
        for i, p in enumerate(prompts):
            tokens[i, plen - len(p) :] = torch.tensor(p, dtype=torch.long)
            self.valid[i, plen - len(p) : plen] = True
        causal = torch.triu(torch.ones(plen, plen, dtype=torch.bool, device=self.dev), diagonal=1)
        return self._forward(tokens, causal[None, None] | ~self.valid[:, None, None, :plen])

    @_outside_inference_mode
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.valid[:, self.pos] = True
        mask = ~self.valid[:, None, None, : self.pos + 1]
        self.ctx.enable_decode_mode()
        return self._forward(tokens.clone()[:, None], mask)

    @_outside_inference_mode
    def keep(self, rows: torch.Tensor) -> None:
        rows = rows.clone()
        self.ctx.key_value_memory_dict = {
            layer: (k[:, rows], v[:, rows]) for layer, (k, v) in self.ctx.key_value_memory_dict.items()
        }
        self.valid = self.valid[rows]


@contextlib.contextmanager
def megatron_decoding(monkeypatch):
    """Inside: `generate` decodes with megatron's static-batching inference."""
    with monkeypatch.context() as m:
        m.setattr(generate_module, "Decoder", MegatronStaticDecoder)
        yield


@torch.no_grad()
def greedy_no_cache(model, prompt_ids: list[int], max_new_tokens: int, eos_id: int, vocab_size: int) -> list[int]:
    """Re-run the full sequence every step and take the argmax (no cache, no batching)."""
    dev = next(model.parameters()).device
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
