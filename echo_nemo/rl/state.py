"""`RLRun`: what one RL run holds, grouped by concern, for the step loop and the algorithms.

    sampler      rl/rollout.py        the training prompts, sampling the policy
    scorer       rl/scoring.py        rewards and formats (TP rank 0 asks, the others receive)
    evaluator    rl/evaluation.py     the held-out greedy eval
    checkpoints  rl/checkpointing.py  when and what to save, resuming
    state        rl/models.py         the policy, its optimizer and schedule, auxiliary models

`open_run` (rl/run.py) builds it; `train` (rl/loop.py) runs it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from echo_nemo.metrics import MetricsLogger
from echo_nemo.model.build import ModelConfig
from echo_nemo.rl.checkpointing import RunCheckpoints
from echo_nemo.rl.config import RLConfig
from echo_nemo.rl.evaluation import HeldOutEval
from echo_nemo.rl.models import TrainState
from echo_nemo.rl.rollout import Sampler
from echo_nemo.rl.scoring import Scorer
from echo_nemo.speed import between_steps


class PhaseTimer:
    """Seconds spent per phase in the current step: `with timer("generate"):` adds to
    `times["time/generate_s"]`; `reset()` starts a step."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def reset(self) -> None:
        self.times = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        between_steps()  # a study may re-divide the cores between its runs
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = f"time/{phase}_s"
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - t0


@dataclass
class RLRun:
    """Everything one RL run holds. Built by `open_run`; trained by `loop.train`."""

    cfg: RLConfig
    run_dir: Path
    tokenizer: Any
    model_config: ModelConfig
    state: TrainState
    total: int  # steps of the run (Expert Iteration: rounds)
    kl_in_reward: bool  # the KL term's place: the reward (True) or the loss
    sampler: Sampler
    scorer: Scorer
    evaluator: HeldOutEval
    checkpoints: RunCheckpoints
    reference: Any = None  # frozen copy of the starting policy when kl.coef > 0
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    logger: MetricsLogger | None = None  # opened by the loop, after a resume truncated metrics.jsonl

    @property
    def model(self) -> Any:
        """The policy."""
        return self.state.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.tokenizer.eos_id

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
