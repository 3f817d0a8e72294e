"""A real single-node SLURM cluster for the `slurm` tests (slurm/local_cluster.sh).

Started once per session under /tmp with free ports, stopped at the end (daemons by pid
file; the test asserts none is left). The Debian packages are installed when missing;
the tests skip, saying why, only where that is impossible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from echo_nemo.net import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "local_cluster.sh"


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "echo_nemo.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


def _daemon_pids(state: Path) -> list[int]:
    pids = []
    for f in ("slurmctld.pid", "slurmd.pid", "munge/munged.pid"):
        p = state / f
        if p.is_file():
            try:
                pid = int(p.read_text().strip())
                os.kill(pid, 0)
                pids.append(pid)
            except (ValueError, OSError):
                pass
    return pids


@pytest.fixture(scope="session")
def slurm_cluster():
    """Yields the cluster's env (SLURM_CONF, PATH with the sacct shim), also set in os.environ."""
    state = Path(tempfile.mkdtemp(prefix="echo-nemo-slurm-", dir="/tmp"))
    env = {
        **os.environ,
        "ECHO_SLURM_DIR": str(state),
        "ECHO_SLURM_CTLD_PORT": str(free_port()),
        "ECHO_SLURM_SLURMD_PORT": str(free_port()),
    }
    r = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600
    )
    if r.returncode != 0:
        installed = shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists()
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        if not installed:
            pytest.skip(f"SLURM packages could not be installed: {r.stderr.strip()[-300:]}")
        raise RuntimeError(f"local SLURM cluster did not start:\n{r.stderr[-3000:]}")
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PATH")}
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    os.environ["PATH"] = f"{state / 'bin'}:{os.environ['PATH']}"
    try:
        yield {
            "state": state,
            "env": {**env, "SLURM_CONF": os.environ["SLURM_CONF"], "PATH": os.environ["PATH"]},
        }
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        left = _daemon_pids(state)
        shutil.rmtree(state, ignore_errors=True)
        assert not left, f"daemons still running after stop: {left}"


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """Echo-lab shards small enough for seconds of pretraining (built by the real CLI)."""
    out = tmp_path_factory.mktemp("sweep_shards") / "echo"
    r = _cli(
        "data",
        "build",
        REPO / "recipes" / "data" / "echo_tg_omi1_omi2.yaml",
        "echolab.num_problems=200",
        "echolab.num_background=20",
        "num_workers=1",
        f"output_dir={out}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return out
