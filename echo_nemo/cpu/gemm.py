"""`linear(x, w)` = x w^T for decode-sized inputs (a few rows, one per sequence), fast on
CPU; installed as the decoder's `linear` for CPU tensors by echo_nemo.cpu.apply.

Two paths, both deterministic:

- **The decode kernel** (echo_nemo/cpu/decode_gemm.c), for float32 weights of at least
  KERNEL_MIN_BYTES on an AVX2 CPU. A decode step streams every weight matrix from memory
  for a few rows of x; MKL's sgemm spends that time packing the weights into panels. The
  kernel streams them once, in place, and prefetches ahead: at the 150m decode shapes (16
  rows) it runs the products in ~25 ms a step where MKL's best form takes ~41 (measured
  on this project's 2-core AMD machines, cold weights). Its sums are ordered differently
  from MKL's, so its results differ from F.linear's in the last bits (a few float32
  ulps); each output is summed in one fixed order whatever the thread count or the TP
  shard. echo_nemo.cpu.kernels compiles it once per machine; without a C
  compiler, on another CPU, or with $ECHO_NEMO_CPU_KERNELS=torch, the BLAS path below runs.
- **BLAS**, for smaller weights (they stay in cache, where MKL is as fast: the tiny
  shape), other dtypes, or without the kernel: the fastest form of the product that is
  bitwise equal to F.linear. The swapped product (w x^T)^T, or the same with the rows
  padded to a multiple of 16, runs 1.3-2.5x faster than F.linear for most decode shapes
  with the very same summation order. Which forms are equal and which is fastest depends
  on the shape, the BLAS and the CPU, so each (rows, weight shape) is decided once per
  process, on its first call: every form is computed, those not bitwise equal to
  F.linear's result are discarded, and the fastest of the rest is kept. The timing only
  ever picks among identical results, so the sampler's tokens never depend on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from echo_nemo.cpu import kernels

MAX_ROWS = 64  # decode batches; prefill's ~256-row packs stay on F.linear (little to gain,
# and every pack has its own row count to decide)
TRIALS = 3
KERNEL_MIN_BYTES = 1 << 20  # smaller weights stay in cache between steps, where BLAS is as
# fast (tiny's largest matrix is 0.5 MiB: its rollouts, and the quickstart's, keep BLAS's bits)


def _swapped(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w @ x.t()).t()


def _padded(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    rows = x.size(0)
    xp = x.new_zeros(-(-rows // 16) * 16, x.size(1))
    xp[:rows] = x
    return (w @ xp.t()).t()[:rows].contiguous()  # a dense result: silu's strided loop rounds differently


def _plain(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x.contiguous(), w)


FORMS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "linear": _plain,
    "swapped": _swapped,
    "padded": _padded,
}
_chosen: dict[tuple, Callable] = {}


def choose(x: torch.Tensor, w: torch.Tensor) -> str:
    """The fastest form bitwise equal to F.linear for this shape (x: [rows, in], contiguous
    or a transposed view, as the previous product left it)."""
    ref = _plain(x, w)
    best, best_t = "linear", float("inf")
    for name, form in FORMS.items():
        if not torch.equal(form(x, w), ref):
            continue
        t0 = time.perf_counter()
        for _ in range(TRIALS):
            form(x, w)
        took = time.perf_counter() - t0
        if took < best_t:
            best, best_t = name, took
    return best


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x w^T over the last dimension (F.linear without bias), any leading dimensions.

    The result may be a transposed view (dense): elementwise ops on it round as on
    F.linear's; `x + view` keeps x's layout; make it .contiguous() before a reduction."""
    rows, k = x.numel() // x.size(-1), x.size(-1)
    if x.device.type != "cpu" or rows > MAX_ROWS or w.dtype != torch.float32 or x.dtype != torch.float32 \
            or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)):
        return F.linear(x, w)
    x2 = x.reshape(rows, k)
    if w.numel() * 4 >= KERNEL_MIN_BYTES and k % 8 == 0 and w.is_contiguous() and (lib := kernels.load()):
        x2 = x2.contiguous()
        y = torch.empty(rows, w.size(0))
        lib.echo_decode_gemm(x2.data_ptr(), w.data_ptr(), y.data_ptr(), rows, k, w.size(0), torch.get_num_threads())
        return y.view(*x.shape[:-1], w.size(0))
    key = (rows, *w.shape, w.stride(), x2.is_contiguous())
    form = _chosen.get(key)
    if form is None:
        form = _chosen[key] = FORMS[choose(x2, w)]
    return form(x2, w).view(*x.shape[:-1], w.size(0))
