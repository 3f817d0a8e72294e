"""glibc malloc settings for training on CPU: freed memory stays in the process.

A training step allocates and frees the same large tensors every step (activations, the
logits and their gradient, parameter gradients, AdamW's temporaries). glibc serves an
allocation above its mmap threshold with a fresh mmap and unmaps it on free, and trims
the heap's free top back to the kernel, so every step page-faults most of its working
set in again: at the 150m shape (2 x 512 tokens, vocab 32000) ~310,000 minor faults a
step, a fifth of its time (`benchmarks/bench_pretrain.py --malloc glibc`). With mmap
and trimming off, the next step reuses the blocks the last one freed.

The price is memory: a process keeps its peak heap until it exits, and blocks freed
between differently sized ones fragment it. Measured: the 150m benchmark peaks at 6.4 GB
either way; a tiny model with vocab 32000 peaks at 1.6 GB instead of 1.2 (2.2 instead of
1.4 when the batch size changes every step) and runs 1.55x faster. Float results do not
change: torch aligns every tensor to 64 bytes whatever malloc returns (tested: a
pretraining run's losses are the same to the bit). A user who set glibc's malloc knobs
($MALLOC_*_ or glibc.malloc tunables) keeps them; $ECHO_NEMO_MALLOC=glibc keeps glibc's
defaults (any other value than glibc or echo-nemo exits 2).
"""

from __future__ import annotations

import argparse
import ctypes
import os

from echo_nemo import env

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)


def user_configured() -> bool:
    """True when the environment already says how glibc's malloc should behave."""
    return (
        env.malloc() == "glibc"
        or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
        or any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ)
    )


def add_option(parser: argparse.ArgumentParser) -> None:
    """The benchmarks' `--malloc`: echo-nemo's settings (the default) or glibc's."""
    parser.add_argument("--malloc", default="echo-nemo", choices=env.MALLOC.choices,
                        help="echo-nemo: the settings every echo-nemo command applies (both sides of "
                             "a benchmark run in one process); glibc: glibc's defaults")


def keep_freed_memory() -> bool:
    """Turn off mmap for large blocks and heap trimming (glibc only). True when applied."""
    if user_configured():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own libc: no library search at start-up
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap max 0: never mmap (blocks too large for a thread's arena still get one);
    # trim threshold -1: never trim (mallopt(3))
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
