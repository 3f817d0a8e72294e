"""The pretraining recipe schema (recipes/pretrain/*.yaml validate against `PretrainConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from echo_nemo.config import ParallelConfig
from echo_nemo.errors import UserError
from echo_nemo.model.build import ModelConfig
from echo_nemo.model.scales import get_scale
from echo_nemo.optim import OptimConfig


@dataclass
class DataConfig:
    shards: str = "runs/data/echolab_equal"  # a folder written by `echo-nemo data build`


@dataclass
class TrainConfig:
    steps: int = 1000
    global_batch_size: int = 512  # sequences per optimizer step, at any TP/DP/accumulation
    micro_batch_size: int = 8  # sequences per forward pass per data-parallel rank
    seed: int = 1234
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU; or fp32 / bf16
    log_every: int = 1
    threads: int = 0  # CPU threads for torch (0: leave torch's default)
    # Start from these weights (a checkpoint or run dir, e.g. from `echo-nemo import hf`)
    # instead of a random init; ignored when resuming.
    init_from: str | None = None


@dataclass
class CheckpointConfig:
    every: int = 1000  # save every N steps (and at the last step); 0: only at the end
    keep_last: int = 2  # newest checkpoints to keep besides `keep_steps`
    keep_steps: list[int] = field(default_factory=list)  # always kept (and saved at)
    log_spaced: int = 0  # also save and keep this many log-spaced steps (logspace(-2.1, 0))
    resume: bool = True  # continue from the run dir's latest complete checkpoint


@dataclass
class PretrainConfig:
    run_dir: str = "runs/pretrain/tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(warmup_steps=5000))
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    RENAMED: ClassVar[dict[str, str]] = {"optim.beta1": "optim.betas.0", "optim.beta2": "optim.betas.1"}

    def validate(self) -> None:
        get_scale(self.model.scale)  # names the valid scales when it is not one
        t = self.train
        if t.steps <= 0:
            raise UserError(f"train.steps must be positive, got {t.steps}")
        if t.micro_batch_size <= 0 or t.global_batch_size <= 0:
            raise UserError("train.global_batch_size and train.micro_batch_size must be positive")
        if t.global_batch_size % t.micro_batch_size:
            raise UserError(
                f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
                f"train.micro_batch_size ({t.micro_batch_size})"
            )
        if t.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"train.precision must be auto, fp32 or bf16, got {t.precision!r}")
        self.parallel.validate()
        self.optim.validate()
        if self.checkpoint.keep_last < 0:
            raise UserError(f"checkpoint.keep_last must be >= 0, got {self.checkpoint.keep_last}")
