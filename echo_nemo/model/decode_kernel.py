"""Build and load the decode kernel (decode_gemm.c), once per machine; no torch here, so
the CLI can check $ECHO_NEMO_DECODE_GEMM before any command starts.

The library is compiled with the C compiler ($CC, default cc) into $ECHO_NEMO_CACHE
(default ~/.cache/echo-nemo)/kernels, named by a hash of the source, compiler and flags,
so a changed source or compiler builds anew and concurrent builders (TP ranks, runs side
by side) each move a whole file into place. Where it cannot be built or loaded (no
compiler, not x86-64 Linux with AVX2 and FMA, a second OpenMP runtime) `load()` says why
on stderr once and returns None: decoding then runs on BLAS (echo_nemo.model.gemm).
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
from collections.abc import Callable
from pathlib import Path

from echo_nemo.errors import UserError

ENV = "ECHO_NEMO_DECODE_GEMM"
CHOICES = ("kernel", "blas")
SOURCE = Path(__file__).with_name("decode_gemm.c")
CFLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared"]


def choice() -> str:
    """$ECHO_NEMO_DECODE_GEMM: kernel (the default) or blas."""
    value = os.environ.get(ENV, "kernel")
    if value not in CHOICES:
        raise UserError(f"${ENV} must be one of {', '.join(CHOICES)} (or unset), got {value!r}")
    return value


def build(cache: Path | None = None) -> Path:
    """The compiled library (compiled now unless cached); RuntimeError when the compiler fails."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler {cc!r} on PATH")
    cache = cache or Path(os.environ.get("ECHO_NEMO_CACHE", Path.home() / ".cache" / "echo-nemo"))
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *CFLAGS]).encode()).hexdigest()[:16]
    lib = cache / "kernels" / f"decode_gemm-{key}.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_name(f"{lib.name}.{os.getpid()}.tmp")
    done = subprocess.run([cc, *CFLAGS, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True, timeout=300)
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
def load() -> Callable | None:
    """echo_decode_gemm(x, w, y, M, K, N, threads) from the compiled library, or None."""
    if choice() == "blas" or not _cpu_ok():
        return None
    try:
        before = _openmp_runtimes()
        fn = ctypes.CDLL(str(build())).echo_decode_gemm
        # its OpenMP must be the one torch loaded (the same thread pool): a second runtime's
        # spinning threads would fight torch's for the cores
        if before and len(_openmp_runtimes()) > len(before):
            raise RuntimeError("it loaded a second OpenMP runtime next to torch's")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"echo-nemo: the decode kernel is not available ({e}); decoding uses BLAS", file=sys.stderr)
        return None
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4
    fn.restype = None
    return fn
