"""Helpers shared by the sweep tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pretrain_overrides(shards: Path, steps: int, every: int = 0) -> list[str]:
    """A debug-scale pretraining of `steps` steps on one thread."""
    return [
        f"data.shards={shards}",
        "model.scale=debug",
        f"train.steps={steps}",
        "train.global_batch_size=2",
        "train.micro_batch_size=2",
        "train.log_every=1",
        "train.threads=1",
        f"checkpoint.every={every}",
        "checkpoint.keep_last=2",
    ]
