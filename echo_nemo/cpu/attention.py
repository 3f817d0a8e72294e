"""Causal self-attention for the training forward on CPU: echo-nemo's C kernel
(attention.c, built by echo_nemo.cpu.kernels), torch's SDPA where the kernel does not apply.
Installed as `causal_attention` for CPU tensors by echo_nemo.cpu.apply (echo_nemo.speed).

    o = softmax(q k^T / sqrt(d) + causal mask) v        (grouped-query: k, v shared by
                                                        heads / groups query heads)

Why a kernel of our own: torch's CPU flash attention runs the study's head sizes at
~50 GFLOP/s on this project's 2-core machines, a fifth of their matmul peak, and at the
tiny shape a fifth of a training step goes there (forward 5.5 ms, backward 12.9 ms a
layer; benchmarks/bench_attention.py times both). The kernel's results equal SDPA's to
float rounding (tested against a float64 reference, with gradients), and do not depend
on the thread count.

The output comes back as [b, s, heads, d], the layout the output projection reads, so
neither path copies it again; the kernel reads q, k and v in place through their strides
and writes the gradients in the same [b, s, ., d] layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from echo_nemo.cpu import kernels


def _strides(t: torch.Tensor) -> kernels.Strides:
    """[b, heads, s, d] view -> its (batch, head, position) element strides."""
    return kernels.Strides(t.stride(0), t.stride(1), t.stride(2))


def _bshd(b: int, s: int, h: int, d: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A [b, s, h, d] buffer and its [b, h, s, d] view."""
    t = like.new_empty(b, s, h, d)
    return t, t.transpose(1, 2)


class _KernelAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        lib = kernels.load()
        b, h, s, d = q.shape
        o, o_view = _bshd(b, s, h, d, q)
        lse = q.new_empty(b, h, s)
        lib.echo_attention_fwd(q.data_ptr(), _strides(q), k.data_ptr(), _strides(k), v.data_ptr(), _strides(v),
                               o.data_ptr(), _strides(o_view), lse.data_ptr(), b, h, k.size(1), s, d, d**-0.5,
                               torch.get_num_threads())
        ctx.save_for_backward(q, k, v, o, lse)
        return o

    @staticmethod
    def backward(ctx, grad):
        lib = kernels.load()
        q, k, v, o, lse = ctx.saved_tensors
        b, h, s, d = q.shape
        g = k.size(1)
        grad = grad if grad.stride(-1) == 1 else grad.contiguous()
        dq, dq_view = _bshd(b, s, h, d, q)
        dk, dk_view = _bshd(b, s, g, d, q)
        dv, dv_view = _bshd(b, s, g, d, q)
        lib.echo_attention_bwd(q.data_ptr(), _strides(q), k.data_ptr(), _strides(k), v.data_ptr(), _strides(v),
                               o.data_ptr(), _strides(o.transpose(1, 2)), grad.data_ptr(),
                               _strides(grad.transpose(1, 2)), lse.data_ptr(), dq.data_ptr(), _strides(dq_view),
                               dk.data_ptr(), _strides(dk_view), dv.data_ptr(), _strides(dv_view), b, h, g, s, d,
                               d**-0.5, torch.get_num_threads())
        return dq_view, dk_view, dv_view


MAX_SEQ_X_HEAD_DIM = 2048 * 64  # beyond, score rows outgrow L2 and SDPA's key blocking wins
# (measured fwd+bwd, kernel vs SDPA: s=1024 d=128 0.88x the time, s=2048 d=64 0.91x, s=2048 d=128 1.11x)


def uses_kernel(q: torch.Tensor) -> bool:
    """True when `causal` runs echo-nemo's kernel for queries like q [b, heads, s, d]."""
    return (q.device.type == "cpu" and q.dtype == torch.float32 and q.size(-1) % 8 == 0
            and q.size(2) * q.size(3) <= MAX_SEQ_X_HEAD_DIM and not torch.is_autocast_enabled("cpu")
            and kernels.load() is not None)


def causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of q [b, heads, s, d] over k, v [b, groups, s, d] (views of any
    strides, d contiguous); returns [b, s, heads, d]."""
    if uses_kernel(q) and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1:
        return _KernelAttention.apply(q, k, v)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.size(1) != k.size(1))
    return o.transpose(1, 2)
