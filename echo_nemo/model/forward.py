"""The GPT's one training forward, in plain torch ops over megatron's own parameters.

Every logit and loss the package computes (pretraining, RL's log-probs and critic values,
evaluation, the launch checks) comes from `causal_forward`; sampling runs the same
arithmetic incrementally (echo_nemo.model.decode). The arithmetic:

    x = E[tokens];  per layer:  x += W_o attn_causal(rope(q), rope(k), v),  q, k, v = W_qkv LN(x)
                                x += W_2 (silu(g) * u),                     g, u = W_1 LN(x)
    logits = output_layer(LN(x))
    loss_t = logsumexp(logits_t) - logits_t[label_t]

Why this forward and not megatron's module stack: on CPU megatron's local layer spec
spends a fifth to a third of a training step outside the matmuls ([s, b, h] <-> [b, h, s, d]
permutes and copies around attention, RoPE through two concatenations per tensor, the
bias-dropout-add, RNG-tracker forks, a cross entropy of separate max / exp / sum / gather
passes). This forward runs in the [b, s, h] layout Hugging Face's OLMo uses, on the very
parameter tensors of the megatron module (gradients land in their .grad; checkpoints, the
HF export and the optimizer see nothing new), and agrees with megatron's forward to float
rounding in logits, loss and gradients (tests/model/reference_megatron.py keeps megatron's forward
for that test). Tensor parallelism uses megatron's autograd-aware mappings: an
identity-forward / all-reduce-backward copy before each column-parallel matmul and an
all-reduce after each row-parallel one, exactly what its ColumnParallelLinear and
RowParallelLinear do; the loss at TP > 1 is megatron's vocab-parallel cross entropy.

attn_causal is torch's SDPA unless a speed layer installed another for the tensors'
device (echo_nemo.speed; on CPU echo_nemo.cpu installs its C kernel). The model must be
the study's architecture as echo_nemo.model.build makes it (`supports`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import mappings, vocab_parallel_cross_entropy

from echo_nemo import speed
from echo_nemo.distributed import tp_rank, tp_size


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


def sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of q [b, heads, s, d] over k, v [b, groups, s, d]; returns [b, s, heads, d]."""
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.size(1) != k.size(1))
    return o.transpose(1, 2)


def supports(model) -> bool:
    """True when `causal_forward` computes exactly what megatron's forward would: the
    study's architecture (RoPE, SwiGLU, no biases, no dropout), no pipeline, sequence or
    context parallelism. Every model echo_nemo.model.build makes qualifies."""
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


def check_supported(model) -> None:
    """ValueError unless `supports(model)`."""
    if not supports(model):
        raise ValueError("echo-nemo's forward runs the study's GPT as echo_nemo.model.build makes it "
                         "(RoPE, SwiGLU, no biases or dropout, no pipeline / sequence / context parallelism)")


def _tp(x: torch.Tensor, where: str, tp: int) -> torch.Tensor:
    if tp == 1:
        return x
    if where == "copy":  # into a column-parallel matmul: identity forward, all-reduce backward
        return mappings.copy_to_tensor_model_parallel_region(x)
    return mappings.reduce_from_tensor_model_parallel_region(x)  # out of a row-parallel one


def logits_forward(model, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [b, s, V/tp] (full V when built with parallel_output=False) of the causal LM,
    the same as megatron's `model(tokens, arange positions, attention_mask=None)`."""
    gpt = getattr(model, "module", model)
    s = tokens.size(1)
    attend = speed.ops(tokens.device.type).causal_attention or sdpa_causal
    x = gpt.embedding.word_embeddings(tokens)  # vocab-parallel lookup + all-reduce: [b, s, d]
    freqs = gpt.rotary_pos_emb(s)[:, 0, 0]  # [s, hn], megatron's table
    cos, sin = (t[:, None, None] for t in rope_tables(freqs, x.dtype))  # [s, 1, 1, hn]
    return output_logits(gpt, decoder_layers(gpt, x, cos, sin, attend))


class _SiluGLU(torch.autograd.Function):
    """silu(g) * u of y = [g, u], whose backward writes dg and du into one [..., 2f] buffer
    instead of concatenating them (the same ops otherwise: the same bits as autograd's)."""

    @staticmethod
    def forward(ctx, y):
        g, u = y.chunk(2, dim=-1)
        s = F.silu(g)
        ctx.save_for_backward(g, u, s)
        return s * u

    @staticmethod
    def backward(ctx, grad):
        g, u, s = ctx.saved_tensors
        dy = grad.new_empty(*grad.shape[:-1], 2 * grad.size(-1))
        dg, du = dy.chunk(2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(grad * u, g, grad_input=dg)
        torch.mul(grad, s, out=du)
        return dy


def swiglu(y: torch.Tensor, act) -> torch.Tensor:
    """act(g) * u of the fused FC1 output y = [g, u] (its last dimension's halves)."""
    if act is F.silu and torch.is_grad_enabled() and y.requires_grad:
        return _SiluGLU.apply(y)
    g, u = y.chunk(2, dim=-1)
    return act(g) * u


def decoder_layers(gpt, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend) -> torch.Tensor:
    """The transformer layers and the final norm over x [b, s, d] (cos, sin: [s, 1, 1, hn]
    RoPE tables of each position); `attend(q [b, heads, s, hn], k, v [b, groups, s, hn])`
    returns the attention output [b, s, heads, hn]."""
    cfg = gpt.config
    tp = tp_size()
    b, s, _ = x.shape
    hn = cfg.kv_channels
    groups = (cfg.num_query_groups or cfg.num_attention_heads) // tp
    per = cfg.num_attention_heads // (cfg.num_query_groups or cfg.num_attention_heads)
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
        o = attend(q, k, v).reshape(b, s, groups * per * hn)
        x = x + _tp(F.linear(o, attn.linear_proj.weight), "reduce", tp)
        h = _tp(layer.pre_mlp_layernorm(x), "copy", tp)
        x = x + _tp(F.linear(swiglu(F.linear(h, mlp.linear_fc1.weight), cfg.activation_func),
                             mlp.linear_fc2.weight), "reduce", tp)
    return gpt.decoder.final_layernorm(x)


def output_logits(gpt, x: torch.Tensor) -> torch.Tensor:
    """The output layer over final hidden states x [..., d]: logits [..., V/tp]."""
    weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None
    logits, _ = gpt.output_layer(x, weight=weight)  # column-parallel (a critic's value head too)
    return logits


@dataclass
class Packing:
    """Sequences that share prefixes (a GRPO group's prompt), each distinct token once.

    tokens, positions: [T] the distinct tokens and each one's position in its sequences;
    gather: [seqs * length] the packed row of each sequence's position, every sequence
    right-padded to `length` (padding points at any row: causal attention never reads it);
    scatter: [T] for each packed row, the slot (sequence * length + position) whose
    attention output it takes (a shared token's: the first sequence holding it).
    echo_nemo.rl.packing builds them from an RL experience.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    gather: torch.Tensor
    scatter: torch.Tensor
    seqs: int
    length: int


def packed_forward(model, packing: Packing, rows: torch.Tensor) -> torch.Tensor:
    """Logits [len(rows), V/tp] at packed rows `rows` of sequences that share prefixes.

    The per-token products (norms, QKV, projections, MLP) run once per distinct token, so a
    prompt shared by k samples costs one pass, not k; attention runs per sequence over its
    tokens gathered from the packed rows. Equals `logits_forward` on each sequence alone to
    float rounding; the gradient of a shared token sums over the sequences that read it
    (index_select's backward adds).
    """
    check_supported(model)
    gpt = getattr(model, "module", model)
    attend = speed.ops(packing.tokens.device.type).causal_attention or sdpa_causal
    n, length = packing.seqs, packing.length

    def per_sequence(t: torch.Tensor) -> torch.Tensor:  # [1, heads, T, hn] -> [n, heads, length, hn]
        t = t[0].transpose(0, 1).index_select(0, packing.gather)
        return t.view(n, length, t.size(1), t.size(2)).transpose(1, 2)

    def packed_attend(q, k, v):
        o = attend(per_sequence(q), per_sequence(k), per_sequence(v))  # [n, length, heads, hn]
        return o.reshape(n * length, o.size(2), o.size(3)).index_select(0, packing.scatter)[None]

    x = gpt.embedding.word_embeddings(packing.tokens[None])  # [1, T, d]
    freqs = gpt.rotary_pos_emb(length)[:, 0, 0]  # every position is < length
    cos, sin = (t.index_select(0, packing.positions)[:, None, None] for t in rope_tables(freqs, x.dtype))
    x = decoder_layers(gpt, x, cos, sin, packed_attend)
    return output_logits(gpt, x.index_select(1, rows))[0]


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int, parallel: bool = True) -> torch.Tensor:
    """Set the logits of padded vocabulary ids (>= vocab_size) to the dtype's minimum, in place.

    The embedding is padded to a multiple of 128 * TP, so without this mask the padded
    rows join the softmax and the loss would depend on the TP size. `parallel`: the
    logits are this TP rank's vocabulary shard (else the full padded vocabulary).
    """
    local = logits.shape[-1]
    start = tp_rank() * local if parallel else 0
    if start + local > vocab_size:
        logits[..., max(vocab_size - start, 0) :] = torch.finfo(logits.dtype).min
    return logits


def causal_forward(
    model,
    tokens: torch.Tensor,
    labels: torch.Tensor | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Run the GPT on [batch, seq] tokens: per-token loss [b, s] with labels, else logits.

    Logits are vocab-parallel ([b, s, V/tp]) unless the model was built with
    parallel_output=False. With `vocab_size` (the tokenizer's), padded vocabulary ids are
    masked out of the logits and the loss (the loss is then the same at every TP size).
    The loss is torch's fused cross entropy where the logits hold the whole vocabulary,
    megatron's vocab-parallel one where they are TP shards.
    """
    check_supported(model)
    b, s = tokens.shape
    logits = logits_forward(model, tokens)
    parallel = getattr(getattr(model, "module", model), "parallel_output", True)
    if vocab_size is not None:
        logits = mask_padded_vocab(logits, vocab_size, parallel)
    if labels is None:
        return logits
    if tp_size() == 1 or not parallel:
        v = logits.shape[-1]
        return F.cross_entropy(logits.float().view(-1, v), labels.reshape(-1), reduction="none").view(b, s)
    return vocab_parallel_cross_entropy(logits.float(), labels)
