"""`linear(x, w)` = F.linear(x, w) for decode-sized inputs, in the fastest form of the product
that gives bitwise the same result on this machine.

A decode step multiplies a few rows (one per sequence) by each weight matrix. For those
shapes MKL's kernel for x w^T is far from the machine's matmul peak, while the swapped
product (w x^T)^T, or the same with the rows padded to a multiple of 16, runs 1.3-2.5x
faster at the 150m shape (16 rows x 768 -> 6144: 2.2 -> 1.3 ms, measured on this
project's AMD CPUs) -- and for most row counts with the very same summation order, so
the results are bitwise equal. Which forms are equal and which is fastest depends on the
shape, the BLAS and the CPU, so each (rows, weight shape) is decided once per process, on
its first call: every form is computed, those not bitwise equal to F.linear's result are
discarded, and the fastest of the rest (F.linear itself included) is kept. The timing
only ever picks among identical results, so the sampler's tokens never depend on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

MAX_ROWS = 64  # decode batches; prefill's ~256-row packs stay on F.linear (little to gain,
# and every pack has its own row count to decide)
TRIALS = 3


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
    rows = x.numel() // x.size(-1)
    if x.device.type != "cpu" or rows > MAX_ROWS or w.dtype != torch.float32:
        return F.linear(x, w)
    x2 = x.reshape(rows, x.size(-1))
    key = (rows, *w.shape, w.stride(), x2.is_contiguous())
    form = _chosen.get(key)
    if form is None:
        form = _chosen[key] = FORMS[choose(x2, w)]
    return form(x2, w).view(*x.shape[:-1], w.size(0))
