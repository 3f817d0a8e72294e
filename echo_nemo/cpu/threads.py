"""A run's share of the CPU cores, re-divided while it runs.

A study on one machine runs two runs side by side, each with half the cores as torch
threads (echo_nemo.study.run). Shares fixed at launch leave cores idle: when one of the
two ends first, the other finishes on half the machine (a stage's last RL run, or a small
model's pretraining beside a tiny one's). So a study budget with `share_cores` writes each
local run's share to the file named by $ECHO_NEMO_THREADS_FILE whenever the runs side by
side change; `echo_nemo.cpu.apply` then hooks `follow_share()` into `echo_nemo.speed`'s
`between_steps()`, which the pretraining and RL loops call at every step and phase:
torch's thread count follows the file. The price: torch's float results depend on
the thread count (a tiny pretraining on 1 thread differs from 2 threads in the
7th digit of a gradient norm at step 40), so a run's numbers then depend on when its
neighbours finish. Off by default; a run without the variable never reads anything.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from echo_nemo import env


class ThreadShare:
    """Reads the share file at most every `every_s` seconds; sets torch's threads when it changed."""

    def __init__(self, path: str | os.PathLike | None = None, every_s: float = 1.0) -> None:
        self.path = Path(path) if path else env.threads_file()
        self.every_s = every_s
        self.next_read = 0.0

    def follow(self) -> int | None:
        """The new thread count when it changed, else None."""
        import torch  # here: the study driver writes shares without loading torch

        now = time.monotonic()
        if self.path is None or now < self.next_read:
            return None
        self.next_read = now + self.every_s
        try:
            n = int(self.path.read_text())
        except (OSError, ValueError):  # not written yet, or caught mid-replace: next time
            return None
        if n < 1 or n == torch.get_num_threads():
            return None
        torch.set_num_threads(n)
        return n


_SHARE: ThreadShare | None = None


def follow_share() -> None:
    """Follow this process's share file ($ECHO_NEMO_THREADS_FILE), if it has one."""
    global _SHARE
    if _SHARE is None:
        _SHARE = ThreadShare()
    _SHARE.follow()


def write_share(path: Path, threads: int) -> None:
    """Replace the share file atomically (a reader never sees half a number)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(threads))
    os.replace(tmp, path)
