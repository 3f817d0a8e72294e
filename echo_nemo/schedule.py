"""The study's checkpoint schedule: which steps of a run are saved and kept forever.

Pretraining (`checkpoint.log_spaced`) and RL (`num_checkpoints`) save at the same
log-spaced fractions of their runs, so the study's measures over training (pass@k,
format shares per checkpoint: echo_nemo.study.measures) read comparable points of every run.
"""

from __future__ import annotations

import math

import numpy as np


def log_spaced_steps(total: int, num: int = 15) -> list[int]:
    """The study's log-spaced checkpoint steps: ceil(logspace(-2.1, 0, num) * total), unique, >= 1.

    The last step is always among them (num <= 1 keeps only it): a run's result is saved.
    """
    if num <= 1:
        return [total]
    fracs = np.logspace(-2.1, 0, num)
    return sorted({max(1, min(total, math.ceil(f * total - 1e-9))) for f in fracs} | {total})
