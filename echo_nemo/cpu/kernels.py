"""echo-nemo's two CPU kernels in C, built once per machine and loaded with ctypes; no
torch here, so the CLI can check $ECHO_NEMO_CPU_KERNELS before any command starts.

- decode_gemm.c: x w^T for a decode step's few rows against large weights
  (echo_nemo.cpu.gemm);
- attention.c: causal self-attention forward and backward for training
  (echo_nemo.cpu.attention).

`build()` is the one way they are built: the sources ship as package data of
`echo_nemo.cpu` (pyproject.toml) and are compiled at first use with the C compiler ($CC,
default cc) into one library under $ECHO_NEMO_CACHE (default ~/.cache/echo-nemo)/kernels,
named by a hash of the sources, compiler and flags: a changed source or compiler builds
anew, and concurrent builders
(TP ranks, runs side by side) each move a whole file into place. Their OpenMP is the
runtime torch loaded, so they run on torch's thread pool. Where the library cannot be
built or loaded (no compiler, not x86-64 Linux with AVX2 and FMA, a second OpenMP
runtime) `load()` says why on stderr once and returns None, and torch's own kernels run
instead; $ECHO_NEMO_CPU_KERNELS=torch asks for those (e.g. to compare results with a
machine that has no compiler: the two give the same numbers to float rounding only).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from echo_nemo import env

SOURCES = [Path(__file__).with_name(n) for n in ("decode_gemm.c", "attention.c")]
CFLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared"]


class Strides(ctypes.Structure):
    """Element strides of a [batch, heads, positions, d] view (attention.c's `strides`)."""

    _fields_ = [("sb", ctypes.c_long), ("sh", ctypes.c_long), ("st", ctypes.c_long)]


_P, _I, _F, _S = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, Strides
SIGNATURES = {
    "echo_decode_gemm": [_P, _P, _P, _I, _I, _I, _I],
    "echo_attention_fwd": [_P, _S, _P, _S, _P, _S, _P, _S, _P, _I, _I, _I, _I, _I, _F, _I],
    "echo_attention_bwd": [_P, _S, _P, _S, _P, _S, _P, _S, _P, _S, _P, _P, _S, _P, _S, _P, _S,
                           _I, _I, _I, _I, _I, _F, _I],
}


def build(cache: Path | None = None) -> Path:
    """The compiled library (compiled now unless cached); RuntimeError when the compiler fails."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler {cc!r} on PATH")
    cache = cache or env.cache_dir()
    digest = hashlib.sha256(" ".join([cc, *CFLAGS]).encode())
    for src in SOURCES:
        digest.update(src.read_bytes())
    lib = cache / "kernels" / f"echo_nemo_kernels-{digest.hexdigest()[:16]}.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_name(f"{lib.name}.{os.getpid()}.tmp")
    done = subprocess.run([cc, *CFLAGS, *map(str, SOURCES), "-o", str(tmp)], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{cc} failed: {done.stderr.strip()[-400:]}")
    os.replace(tmp, lib)
    return lib


def _cpu_ok() -> bool:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return False
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return "avx2" in flags and "fma" in flags


def _openmp_runtimes() -> set[str]:
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if any(n in line for n in ("libgomp", "libiomp", "libomp"))}


@functools.cache
def load() -> ctypes.CDLL | None:
    """The kernels' library (its functions typed), or None where torch's kernels run instead."""
    if env.cpu_kernels() == "torch" or not _cpu_ok():
        return None
    try:
        before = _openmp_runtimes()
        lib = ctypes.CDLL(str(build()))
        # a second OpenMP runtime's spinning threads would fight torch's for the cores
        if before and len(_openmp_runtimes()) > len(before):
            raise RuntimeError("it loaded a second OpenMP runtime next to torch's")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"echo-nemo: the CPU kernels are not available ({e}); using torch's", file=sys.stderr)
        return None
    for name, argtypes in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    return lib
