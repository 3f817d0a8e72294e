"""Causal attention for training on CPU: echo-nemo's C kernel (echo_nemo/cpu/attention.c)
vs torch's scaled_dot_product_attention (its CPU flash kernel), same inputs, same run.

Inputs are laid out as the training forward has them: q, k and v are strided [b, heads, s, d]
views of one [b, s, 3 * heads, d] tensor. Before timing, the two outputs and input
gradients are compared (max |difference|). Then forward alone and forward + backward are
timed for each, alternating kernel and SDPA for R repeats so machine load hits both
alike; medians are reported with the ratio SDPA time / kernel time (above 1: the kernel
is faster). The default shapes are the pretraining benchmark's: tiny (16 x 256 tokens,
4 heads of 32) and 150m (2 x 512 tokens, 12 heads of 64); the long ones show where the
kernel hands back to SDPA (echo_nemo.cpu.attention.MAX_SEQ_X_HEAD_DIM).

Run: python benchmarks/bench_attention.py [--repeats 11] [--long] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from echo_nemo.cpu import attention, kernels

SHAPES = {"tiny": (16, 4, 256, 32), "150m": (2, 12, 512, 64)}  # batch, heads, seq, head dim
LONG = {"s1024 d64": (2, 12, 1024, 64), "s2048 d64": (1, 12, 2048, 64), "s2048 d128": (1, 16, 2048, 128)}
SMOKE = {"smoke": (2, 2, 40, 16)}


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def case(shape):
    b, h, s, d = shape
    x = torch.randn(b, s, 3 * h, d, generator=torch.Generator().manual_seed(0), requires_grad=True)
    qkv = x[:, :, :h].transpose(1, 2), x[:, :, h:2 * h].transpose(1, 2), x[:, :, 2 * h:].transpose(1, 2)
    return x, qkv, torch.randn(b, s, h, d, generator=torch.Generator().manual_seed(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--long", action="store_true", help="also the long-sequence shapes")
    ap.add_argument("--smoke", action="store_true", help="one tiny shape (the test suite's run)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if kernels.load() is None:
        print("echo-nemo's CPU kernels are not available here (see the message above); nothing to compare")
        sys.exit(1)
    shapes = SMOKE if args.smoke else {**SHAPES, **(LONG if args.long else {})}
    print(f"threads {torch.get_num_threads()}, {args.repeats} repeats, median ms")
    for name, shape in shapes.items():
        x, (q, k, v), grad = case(shape)
        outs = {}
        for side, fn in (("kernel", attention._KernelAttention.apply), ("sdpa", sdpa)):
            x.grad = None
            o = fn(q, k, v)
            o.backward(grad)
            outs[side] = (o.detach(), x.grad.clone())
        diff = max(float((a - b).abs().max()) for a, b in zip(outs["kernel"], outs["sdpa"]))
        times = {(side, what): [] for side in ("kernel", "sdpa") for what in ("fwd", "fwd+bwd")}
        for _ in range(args.repeats):
            for side, fn in (("kernel", attention._KernelAttention.apply), ("sdpa", sdpa)):
                t0 = time.perf_counter()
                with torch.no_grad():
                    fn(q, k, v)
                t1 = time.perf_counter()
                fn(q, k, v).backward(grad)
                t2 = time.perf_counter()
                times[side, "fwd"].append(t1 - t0)
                times[side, "fwd+bwd"].append(t2 - t1)
        med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
        print(f"{name:10s} {str(shape):18s} max |kernel - sdpa| {diff:.1e}  "
              + "  ".join(f"{what}: kernel {med['kernel', what]:7.2f} sdpa {med['sdpa', what]:7.2f} "
                          f"ratio {med['sdpa', what] / med['kernel', what]:.2f}x" for what in ("fwd", "fwd+bwd")))


if __name__ == "__main__":
    main()
