"""Fixtures for the pretraining tests: small echo-lab shards built by the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def build_echolab_shards(out: Path) -> Path:
    """`echo-nemo data build` on the three-format echo-lab mixture, at test size."""
    r = subprocess.run(
        [
            sys.executable, "-m", "echo_nemo.cli", "data", "build",
            "recipes/data/echo_tg_omi1_omi2.yaml",
            "echolab.num_problems=200", "echolab.num_background=20", "seq_length=128",
            "sequences_per_shard=100", "num_workers=1", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "manifest.json").is_file()
    return out


@pytest.fixture(scope="session")
def echolab_shards(tmp_path_factory) -> Path:
    return build_echolab_shards(tmp_path_factory.mktemp("shards") / "echo_tg_omi1_omi2")
