"""The GPT's training forward in plain torch ops, over megatron's own parameters.

megatron's local layer spec on CPU spends a fifth to a third of a training step outside
the matmuls: [s, b, h] <-> [b, h, s, d] permutes and copies around attention (and SDPA's
backward on those strided views), RoPE through two concatenations per tensor, the
layer's bias-dropout-add, RNG-tracker forks and its vocab-parallel cross entropy built
from separate max / exp / sum / gather passes. This module runs the same arithmetic,

    x = E[tokens];  per layer:  x += W_o attn_causal(rope(q), rope(k), v),  q, k, v = W_qkv LN(x)
                                x += W_2 (silu(g) * u),                     g, u = W_1 LN(x)
    logits = output_layer(LN(x))

(attn_causal: echo_nemo.model.attention, echo-nemo's C kernel on CPU, else torch's SDPA)

in the [b, s, h] layout Hugging Face's OLMo uses, on the very parameter tensors of the
megatron module (gradients land in their .grad; checkpoints, the HF export and the
optimizer see nothing new). Tensor parallelism uses megatron's autograd-aware mappings:
an identity-forward / all-reduce-backward copy before each column-parallel matmul and
an all-reduce after each row-parallel one, exactly what its ColumnParallelLinear and
RowParallelLinear do.

`supports(model)` says when the lean forward applies (the study's architecture, no
dropout, no pipeline or sequence parallelism); otherwise causal_forward keeps megatron's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rope_tables(freqs: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin) of megatron's angle table [s, hn] (= [theta, theta] per position).

    The sign of rotate-half is folded into the sine: signed_sin = [-sin(theta), sin(theta)].
    """
    cos, sin = freqs.cos().to(dtype), freqs.sin().to(dtype)
    half = sin.shape[-1] // 2
    return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, megatron's formula x cos + [-x2, x1] sin, as x cos + [x2, x1] signed_sin
    (bit-identical: only where the sign is applied moves)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, x1), dim=-1) * signed_sin


def supports(model) -> bool:
    """True when `lean_forward` computes exactly what megatron's forward would."""
    gpt = getattr(model, "module", model)
    cfg = getattr(gpt, "config", None)
    if cfg is None or not getattr(gpt, "pre_process", False) or not getattr(gpt, "post_process", False):
        return False
    return (
        gpt.position_embedding_type == "rope"
        and not cfg.add_bias_linear
        and not cfg.add_qkv_bias
        and not getattr(cfg, "qk_layernorm", False)
        and not cfg.sequence_parallel
        and cfg.pipeline_model_parallel_size == 1
        and cfg.gated_linear_unit
        and cfg.hidden_dropout == 0.0
        and cfg.attention_dropout == 0.0
        and getattr(gpt.rotary_pos_emb, "rotary_interleaved", False) is False
        and cfg.kv_channels == gpt.rotary_pos_emb.inv_freq.numel() * 2  # rotary_percent = 1
        and getattr(cfg, "context_parallel_size", 1) == 1
    )


def _tp(x: torch.Tensor, where: str, tp: int) -> torch.Tensor:
    if tp == 1:
        return x
    from megatron.core.tensor_parallel import mappings

    if where == "copy":  # into a column-parallel matmul: identity forward, all-reduce backward
        return mappings.copy_to_tensor_model_parallel_region(x)
    return mappings.reduce_from_tensor_model_parallel_region(x)  # out of a row-parallel one


def lean_forward(model, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [b, s, V/tp] (full V when built with parallel_output=False) of the causal LM,
    the same as megatron's `model(tokens, arange positions, attention_mask=None)`."""
    from echo_nemo.distributed import tp_size
    from echo_nemo.model import attention

    gpt = getattr(model, "module", model)
    cfg = gpt.config
    tp = tp_size()
    b, s = tokens.shape
    hn = cfg.kv_channels
    groups = (cfg.num_query_groups or cfg.num_attention_heads) // tp
    per = cfg.num_attention_heads // (cfg.num_query_groups or cfg.num_attention_heads)

    x = gpt.embedding.word_embeddings(tokens)  # vocab-parallel lookup + all-reduce: [b, s, d]
    freqs = gpt.rotary_pos_emb(s)[:, 0, 0]  # [s, hn], megatron's table
    cos, sin = (t[:, None, None] for t in rope_tables(freqs, x.dtype))  # [s, 1, 1, hn]
    for layer in gpt.decoder.layers:
        attn, mlp = layer.self_attention, layer.mlp
        h = _tp(layer.input_layernorm(x), "copy", tp)
        qkv = F.linear(h, attn.linear_qkv.weight).view(b, s, groups, per + 2, hn)
        # a group's queries and its key sit side by side: one RoPE pass rotates them all.
        # split, not indexing: its backward is one concatenation, not a zero-fill per slice
        qk, v = qkv.split([per + 1, 1], dim=3)
        q, k = rope(qk, cos, sin).split([per, 1], dim=3)
        q = q.reshape(b, s, groups * per, hn).transpose(1, 2)
        k, v = k.squeeze(3).transpose(1, 2), v.squeeze(3).transpose(1, 2)
        o = attention.causal(q, k, v).reshape(b, s, groups * per * hn)
        x = x + _tp(F.linear(o, attn.linear_proj.weight), "reduce", tp)
        h = _tp(layer.pre_mlp_layernorm(x), "copy", tp)
        g, u = F.linear(h, mlp.linear_fc1.weight).chunk(2, dim=-1)
        x = x + _tp(F.linear(cfg.activation_func(g) * u, mlp.linear_fc2.weight), "reduce", tp)
    x = gpt.decoder.final_layernorm(x)
    weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None
    logits, _ = gpt.output_layer(x, weight=weight)  # column-parallel (a critic's value head too)
    return logits
