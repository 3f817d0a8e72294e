"""Helpers for tests in any folder: the shared data in ../shared/data and a runner for the
real CLI (a plain module: `conftest` is ambiguous once several conftest.py files are loaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


def shared_texts(data: Path = SHARED_DATA) -> list[str]:
    """Every string field of every row of the shared data files, a row's fields joined by
    blank lines: ~11 MB of math text (GSM8K, MATH-500, AIME, OpenMathInstruct, TinyGSM)."""
    from echo_nemo.data.streams import RowSource

    texts = []
    for p in sorted(data.rglob("*")):
        if p.is_file() and p.suffix in (".jsonl", ".test", ".json"):
            texts += ["\n\n".join(v for v in row.values() if isinstance(v, str)) for _, row in RowSource(p.name, [p]).rows()]
    return texts


def run_cli(*args: str, timeout: float = 600, env: dict | None = None, cwd: str | None = None, nproc: int = 1):
    """Run `echo-nemo ARGS` in a fresh interpreter (or `nproc` ranks under torchrun, the
    launch story of every command at TP > 1); returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    launch = [sys.executable, "-m", "echo_nemo.cli"]
    if nproc > 1:
        full_env.setdefault("OMP_NUM_THREADS", "1")
        # --standalone: torchrun binds the rendezvous port itself; a port picked here could
        # be taken by a parallel test before rank 0 listens
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                  "-m", "echo_nemo.cli"]
    return subprocess.run(
        [*launch, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd or str(REPO),
    )


def needs_cpu_kernels():
    """pytest mark: skip where echo-nemo's C kernels cannot run (no C compiler, no AVX2)."""
    import shutil

    import pytest

    from echo_nemo.cpu import kernels

    missing = not sys.platform.startswith("linux") or shutil.which(os.environ.get("CC", "cc")) is None \
        or not kernels._cpu_ok()
    return pytest.mark.skipif(missing, reason="the CPU kernels need a C compiler and an x86-64 AVX2 CPU")
