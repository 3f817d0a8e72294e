"""The run directory contract: config.yaml, metrics.jsonl, tensorboard/, checkpoints/, report/.

`MetricsLogger.log(step, {"loss": 2.3, "format/text/share": 0.4})` appends one JSON
line with `step` and flat `a/b` keys and mirrors the scalars to TensorBoard. Only rank 0
writes; other ranks get a logger that does nothing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._file = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter  # optional, and heavy

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row: dict[str, Any] = {"step": int(step)}
        for k, v in metrics.items():
            if hasattr(v, "item"):
                v = v.item()
            row[k] = v
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a run's metrics.jsonl (a torn last line from a kill is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(run_dir: str | os.PathLike, after_step: int) -> None:
    """Drop rows logged after `after_step` (a resumed run re-logs them)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= after_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)
