"""RLConfig: the schema of recipes/rl/*.yaml (one typed dataclass per section)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from echo_nemo.config import ParallelConfig
from echo_nemo.errors import UserError
from echo_nemo.optim import OptimConfig

ALGORITHMS = ("ppo", "grpo", "reinforce", "ei")


@dataclass
class ModelSection:
    init: str | None = None  # checkpoint dir or run dir; None = a freshly initialised model
    scale: str = "debug"  # used only when init is None
    tokenizer: str | None = None  # None = the checkpoint's tokenizer, else the default one
    bf16: bool = False


@dataclass
class DataSection:
    train: str = "echolab_train"  # a load_problems name
    train_path: str | None = None
    train_limit: int | None = None
    eval: str = "echolab_test"
    eval_path: str | None = None
    eval_limit: int = 64


@dataclass
class RolloutSection:
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    max_prompt_tokens: int = 128
    batch_size: int | None = None  # sequences per generation batch; None = all at once


@dataclass
class RLOptimConfig(OptimConfig):
    """The shared optimizer settings (echo_nemo.optim) with RL's defaults, plus how the
    update consumes a rollout batch."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_frac: float = 0.03
    critic_lr: float = 1e-4  # PPO's critic (its own AdamW with the same schedule)
    micro_batch_size: int = 16  # sequences per forward/backward
    epochs: int = 1  # passes of the update over each rollout batch (one optimizer step each)


@dataclass
class KLSection:
    coef: float = 0.0  # 0 loads no reference model
    estimator: str = "k3"  # k1 | k2 | k3
    # where the KL term goes: true = -coef * k1 per token in the reward, false = a loss
    # term with `estimator`; null = the algorithm's own choice (ppo, reinforce: reward; grpo: loss)
    in_reward: bool | None = None


@dataclass
class PPOSection:
    clip: float = 0.2
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 1.0
    whiten_advantages: bool = True
    critic_warmup_steps: int = 0  # steps that train only the critic


@dataclass
class GRPOSection:
    clip: float = 0.2
    scale_by_std: bool = True


@dataclass
class ReinforceSection:
    clip: float = 0.2  # ratio clip (the ratio is exactly 1 with one epoch; guards extra epochs)
    ema_decay: float = 0.9  # EMA baseline's decay when samples_per_prompt == 1


@dataclass
class EISection:
    rounds: int = 3
    samples_per_question: int = 64
    temperature: float = 1.0
    top_p: float = 0.95
    sft_lr: float = 1e-4
    sft_epochs: int = 2
    sft_batch_size: int = 64  # sequences per optimizer step (micro-batched)
    online: bool = False  # True: continue from the last round instead of the original base
    questions_per_round: int | None = None  # None = the whole train set


@dataclass
class RewardSection:
    url: str | None = None  # None = start a local reward server for the run
    workers: int = 2
    in_process: bool = False  # score in this process (tests, debugging)
    timeout_s: float = 60.0


@dataclass
class RLCheckpointSection:
    """Resume checkpoints, besides the study's `num_checkpoints` log-spaced ones (kept forever).

    The shape of pretraining's `checkpoint:` section (echo_nemo.train.config.CheckpointConfig)."""

    every: int = 50  # save every N steps (Expert Iteration: rounds); 0: only the log-spaced ones
    keep_last: int = 2  # newest checkpoints to keep; log-spaced ones are never pruned
    resume: bool = True  # continue from the run dir's newest complete checkpoint


@dataclass
class RLConfig:
    algorithm: str = "grpo"
    run_dir: str = "runs/rl"
    seed: int = 1234
    steps: int | None = None  # None = `epochs` passes over the train prompts
    epochs: float = 1.0
    eval_every: int = 0  # greedy eval on held-out prompts at step 0, every N steps and at the last (0: the last only)
    eval_max_new_tokens: int | None = None
    num_checkpoints: int = 15  # the study's logspace(-2.1, 0, 15) x total steps
    entropy_coef: float = 0.0
    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    optim: RLOptimConfig = field(default_factory=RLOptimConfig)
    kl: KLSection = field(default_factory=KLSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    reinforce: ReinforceSection = field(default_factory=ReinforceSection)
    ei: EISection = field(default_factory=EISection)
    reward: RewardSection = field(default_factory=RewardSection)
    checkpoint: RLCheckpointSection = field(default_factory=RLCheckpointSection)

    RENAMED: ClassVar[dict[str, str]] = {"model.tp": "parallel.tp"}

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise UserError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.kl.estimator not in ("k1", "k2", "k3"):
            raise UserError(f"kl.estimator: expected k1, k2 or k3, got {self.kl.estimator!r}")
        if self.kl.coef < 0:
            raise UserError(f"kl.coef must be >= 0, got {self.kl.coef}")
        if self.rollout.temperature <= 0:
            raise UserError(f"rollout.temperature must be > 0, got {self.rollout.temperature}")
        if not 0 < self.rollout.top_p <= 1:
            raise UserError(f"rollout.top_p must be in (0, 1], got {self.rollout.top_p}")
        for key in ("prompts_per_step", "samples_per_prompt", "max_new_tokens"):
            if getattr(self.rollout, key) < 1:
                raise UserError(f"rollout.{key} must be >= 1, got {getattr(self.rollout, key)}")
        if self.algorithm == "grpo" and self.rollout.samples_per_prompt < 2:
            raise UserError("rollout.samples_per_prompt must be >= 2 for grpo (advantages are per group)")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"steps must be >= 1 (or null for `epochs` passes), got {self.steps}")
        if self.checkpoint.every < 0 or self.checkpoint.keep_last < 1:
            raise UserError(
                f"checkpoint.every must be >= 0 and checkpoint.keep_last >= 1 (the newest one resumes), "
                f"got {self.checkpoint.every} and {self.checkpoint.keep_last}"
            )
        self.parallel.validate()
        self.optim.validate()
        if self.optim.micro_batch_size < 1 or self.optim.epochs < 1:
            raise UserError("optim.micro_batch_size and optim.epochs must be >= 1")

    def total_steps(self, num_prompts: int) -> int:
        """Steps of the run: `steps`, else `epochs` passes over the prompts; Expert
        Iteration's steps are its rounds."""
        if self.algorithm == "ei":
            return self.ei.rounds
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * num_prompts / self.rollout.prompts_per_step))
