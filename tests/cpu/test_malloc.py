"""echo_nemo.cpu.malloc: freed memory stays in the process (no page faults when a step
allocates again what the last one freed), and the user's own malloc settings win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from shared_helpers import run_cli

from echo_nemo.cpu import malloc
from echo_nemo.env import MALLOC

# malloc, fill and free 64 MB twice; print the minor page faults of the second time.
PROBE = """
import ctypes, resource
from echo_nemo.cpu.malloc import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
for _ in range(2):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    libc.free(p)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def probe(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != MALLOC.name}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**clean, **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_is_reused_without_page_faults():
    applied, faults = probe()
    assert applied == "True" and faults < 1000, faults  # 64 MB = 16,384 pages of 4 KB
    applied, faults = probe(**{MALLOC.name: "glibc"})  # glibc's defaults: unmapped on free
    assert applied == "False" and faults > 10_000, faults


def test_the_users_own_malloc_settings_are_kept(monkeypatch):
    for k in [k for k in os.environ if k.startswith("MALLOC_")] + [MALLOC.name, "GLIBC_TUNABLES"]:
        monkeypatch.delenv(k, raising=False)
    assert not malloc.user_configured()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # arenas only, not the knobs set here: ours still apply
    assert not malloc.user_configured()
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert malloc.user_configured() and not malloc.keep_freed_memory()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert malloc.user_configured()


def test_a_misspelt_choice_exits_2_naming_the_variable():
    r = run_cli("config", "recipes/pretrain/debug.yaml", env={MALLOC.name: "default"}, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "ECHO_NEMO_MALLOC" in r.stderr and "'default'" in r.stderr and "glibc" in r.stderr
