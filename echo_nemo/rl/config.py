"""RLConfig: the schema of recipes/rl/*.yaml (one typed dataclass per section, `*Config`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from echo_nemo.config import ParallelConfig, SamplingConfig
from echo_nemo.errors import UserError
from echo_nemo.optim import OptimConfig

ALGORITHMS = ("ppo", "grpo", "reinforce", "ei")


@dataclass
class RLModelConfig:
    init: str | None = None  # checkpoint dir or run dir; None = a freshly initialised model
    scale: str = "debug"  # used only when init is None
    tokenizer: str | None = None  # None = the checkpoint's tokenizer, else the default one
    bf16: bool = False


@dataclass
class RLDataConfig:
    train: str = "echolab_train"  # a load_problems name
    train_path: str | None = None
    train_limit: int | None = None
    eval: str = "echolab_test"
    eval_path: str | None = None
    eval_limit: int = 64


@dataclass
class RolloutConfig(SamplingConfig):
    """The rollout phase: the sampling settings (temperature, top_p, top_k) and its sizes."""

    prompts_per_step: int = 8
    samples_per_prompt: int = 8
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
class KLConfig:
    coef: float = 0.0  # 0 loads no reference model
    estimator: str = "k3"  # k1 | k2 | k3
    # where the KL term goes: true = -coef * k1 per token in the reward, false = a loss
    # term with `estimator`; null = the algorithm's own choice (ppo, reinforce: reward; grpo: loss)
    in_reward: bool | None = None


@dataclass
class PPOConfig:
    clip: float = 0.2
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 1.0
    whiten_advantages: bool = True
    critic_warmup_steps: int = 0  # steps that train only the critic


@dataclass
class GRPOConfig:
    clip: float = 0.2
    scale_by_std: bool = True


@dataclass
class ReinforceConfig:
    clip: float = 0.2  # ratio clip (the ratio is exactly 1 with one epoch; guards extra epochs)
    ema_decay: float = 0.9  # EMA baseline's decay when samples_per_prompt == 1


@dataclass
class EIConfig:
    rounds: int = 3
    samples_per_question: int = 64
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0, top_p=0.95))
    sft_lr: float = 1e-4
    sft_epochs: int = 2
    sft_batch_size: int = 64  # sequences per optimizer step (micro-batched)
    online: bool = False  # True: continue from the last round instead of the original base
    questions_per_round: int | None = None  # None = the whole train set


@dataclass
class RewardConfig:
    url: str | None = None  # None = start a local reward server for the run
    workers: int = 2
    in_process: bool = False  # score in this process (tests, debugging)
    timeout_s: float = 60.0


@dataclass
class RLCheckpointConfig:
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
    model: RLModelConfig = field(default_factory=RLModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: RLDataConfig = field(default_factory=RLDataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: RLOptimConfig = field(default_factory=RLOptimConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    reinforce: ReinforceConfig = field(default_factory=ReinforceConfig)
    ei: EIConfig = field(default_factory=EIConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    checkpoint: RLCheckpointConfig = field(default_factory=RLCheckpointConfig)

    RENAMED: ClassVar[dict[str, str]] = {"model.tp": "parallel.tp", "ei.temperature": "ei.sampling.temperature",
                                         "ei.top_p": "ei.sampling.top_p"}

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise UserError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.kl.estimator not in ("k1", "k2", "k3"):
            raise UserError(f"kl.estimator: expected k1, k2 or k3, got {self.kl.estimator!r}")
        if self.kl.coef < 0:
            raise UserError(f"kl.coef must be >= 0, got {self.kl.coef}")
        self.rollout.validate("rollout")
        self.ei.sampling.validate("ei.sampling")
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
