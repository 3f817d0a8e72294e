"""StudyConfig: the schema of recipes/study/*.yaml (a whole study: findings, their
factors and levels, the pretrainings they share, budgets).

    name: echolab
    pretrain_seeds: [0, 1]                     # every pretraining runs once per seed (train.seed)
    seeds: 3                                   # RL seeds 0..seeds-1 of every level, from each
    tuning: RL hyperparameters tuned on pretraining seed 100, RL seeds 100-101
    expectations: recipes/study/_echolab_expectations.yaml   # pre-registered: the verdicts
    calibration: [limit=500]                   # CalibrateConfig overrides (calibrate stage)
    final_eval: {recipe: recipes/eval/echolab_tiny_cpu.yaml}  # every RL run and pretraining
    pretrain:                                  # each run once, shared by the findings naming it
      base: {data: recipes/data/echo_tg_omi1_omi2.yaml, recipe: recipes/pretrain/tiny.yaml}
    findings:
      f4:
        title: KL coefficient
        claim: a larger KL keeps minority formats and keeps pass@k stable
        factor: kl.coef
        pretrain: base
        rl_recipe: recipes/rl/grpo_echolab_tiny.yaml
        levels: {"0": {rl: [kl.coef=0.0]}, "0.01": {rl: [kl.coef=0.01]}}
        evals: [{recipe: recipes/eval/echolab_tiny_cpu.yaml, over_steps: true, label: over_steps}]
    budgets:
      smoke: {pretrain: [train.steps=40], rl: [steps=3], max_levels: 2, pretrain_seeds: [0], seeds: 2}
      full: {}

A level may name its own pretraining (mixture and scale findings) and adds RL overrides
to the finding's. Budget overrides come last, so `smoke` can shrink every run; a budget
may also set its own pretraining and RL seeds and calibration overrides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from echo_nemo.errors import UserError

STAGES = ("data", "pretrain", "calibrate", "rl", "eval")
FINAL = "final"  # the label of the study's final eval
_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass
class Pretraining:
    """One pretraining: a data build (recipes/data) and a pretrain run (recipes/pretrain)."""

    data: str = ""
    recipe: str = ""
    data_overrides: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    cost: float = 1.0  # its length in units of the budget's pretrain minutes (see Level.cost)


@dataclass
class Level:
    """One level of a finding's factor: RL overrides, and optionally its own pretraining."""

    pretrain: str | None = None  # a name in the study's `pretrain:`; None = the finding's
    rl_recipe: str | None = None  # None = the finding's
    rl: list[str] = field(default_factory=list)
    # the length of its RL runs in units of the budget's rl minutes: the ETA counts it, and
    # longer runs start first, so that a stage does not end on one long run alone
    cost: float = 1.0


@dataclass
class EvalSpec:
    """An eval after RL: of the final checkpoint, or of every kept checkpoint (pass@k over steps)."""

    recipe: str = ""
    overrides: list[str] = field(default_factory=list)
    over_steps: bool = False  # `echo-nemo eval --checkpoint RL_RUN --all-steps`
    before: bool = False  # also evaluate the pretrained model (transfer: before / after)
    label: str = ""  # run-dir name and report label; default eval<index>


@dataclass
class Finding:
    title: str = ""
    claim: str = ""  # the paper's claim, as the verdict table prints it
    factor: str = ""  # what varies between levels (e.g. kl.coef, algorithm, mixture)
    pretrain: str = "base"
    rl_recipe: str = ""
    rl: list[str] = field(default_factory=list)  # RL overrides of every level
    levels: dict[str, Level] = field(default_factory=dict)
    evals: list[EvalSpec] = field(default_factory=list)  # extra evals beside the study's final_eval
    benchmark: str = "echolab"  # the RL runs' held-out benchmark (acc/<benchmark>/pass@1)
    # the format shares measured: "sampled" (the RL samples, every step, at the run's
    # temperature) or "greedy" (the held-out greedy eval, every `eval_every` steps)
    shares: str = "sampled"
    notes: str = ""  # design notes: why these levels, what was tried


@dataclass
class StageMinutes:
    """Expected minutes of one run of each stage (the progress view's first ETA)."""

    data: float = 1.0
    pretrain: float = 8.0
    calibrate: float = 1.0
    rl: float = 4.0
    eval: float = 1.0


@dataclass
class Budget:
    data: list[str] = field(default_factory=list)
    pretrain: list[str] = field(default_factory=list)
    rl: list[str] = field(default_factory=list)
    eval: list[str] = field(default_factory=list)
    calibration: list[str] = field(default_factory=list)  # after the study's `calibration`
    pretrain_seeds: list[int] | None = None  # None: the study's
    seeds: int | None = None  # None: the study's
    max_levels: int = 0  # > 0: only the first N levels of every factor (plumbing budgets)
    # > 0: runs of every stage at once under --cluster local (instead of each stage's
    # array_parallelism); runs side by side share the cores (OMP_NUM_THREADS = cores // runs)
    at_once: int = 0
    # true: under --cluster local a run left alone takes the cores freed by those that
    # finished (echo_nemo.cpu.threads). Faster, but torch's float results change with the
    # thread count, so a run's numbers then depend on when its neighbours finish.
    share_cores: bool = False
    minutes: StageMinutes = field(default_factory=StageMinutes)


@dataclass
class StageResources:
    """Where one stage's runs go: a cluster profile (slurm/profiles) and overrides of it."""

    profile: str = "local"
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyConfig:
    name: str = "study"
    description: str = ""
    pretrain_seeds: list[int] = field(default_factory=lambda: [0])  # train.seed of every pretraining
    seeds: int = 3  # RL seeds 0..seeds-1 of every level, from each pretraining seed
    tuning: str = ""  # which seeds the RL hyperparameters were tuned on (the report prints it)
    expectations: str = ""  # a YAML of pre-registered expectations (study.expectations): the verdicts
    calibration: list[str] = field(default_factory=list)  # CalibrateConfig overrides (study.calibrate)
    final_eval: EvalSpec | None = None  # one eval of every RL run's final model and every pretrained model
    out_dir: str = "runs/study"  # the study folder is out_dir/name
    budget: str = "full"  # the default of --budget
    only: list[str] = field(default_factory=list)  # findings to run (empty: all); --only sets it
    pretrain: dict[str, Pretraining] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)
    budgets: dict[str, Budget] = field(default_factory=lambda: {"full": Budget()})
    stages: dict[str, StageResources] = field(default_factory=dict)

    def validate(self) -> None:
        where = f"study {self.name!r}"
        if not _NAME.fullmatch(self.name):
            raise UserError(f"{where}: name must use only letters, digits, '_', '.', '+', '-'")
        if self.seeds < 1:
            raise UserError(f"{where}: seeds must be >= 1, got {self.seeds}")
        if not self.pretrain_seeds or len(set(self.pretrain_seeds)) != len(self.pretrain_seeds):
            raise UserError(f"{where}: pretrain_seeds must list distinct seeds, got {self.pretrain_seeds}")
        for bname, b in self.budgets.items():
            if b.seeds is not None and b.seeds < 1:
                raise UserError(f"{where}: budgets.{bname}.seeds must be >= 1, got {b.seeds}")
            if b.pretrain_seeds is not None and (not b.pretrain_seeds or len(set(b.pretrain_seeds)) != len(b.pretrain_seeds)):
                raise UserError(f"{where}: budgets.{bname}.pretrain_seeds must list distinct seeds, got {b.pretrain_seeds}")
        if self.final_eval is not None and not self.final_eval.recipe:
            raise UserError(f"{where}: final_eval needs a `recipe` (recipes/eval)")
        if not self.findings:
            raise UserError(f"{where}: `findings` must list at least one finding")
        if self.budget not in self.budgets:
            raise UserError(f"{where}: budget {self.budget!r} is not in budgets ({', '.join(self.budgets)})")
        for stage in self.stages:
            if stage not in STAGES:
                raise UserError(f"{where}: stages.{stage}: expected one of {', '.join(STAGES)}")
        for name, p in self.pretrain.items():
            if not (p.data and p.recipe):
                raise UserError(f"{where}: pretrain.{name} needs `data` (recipes/data) and `recipe` (recipes/pretrain)")
            if p.cost <= 0:
                raise UserError(f"{where}: pretrain.{name}.cost must be > 0, got {p.cost}")
        for fid, f in self.findings.items():
            fw = f"{where}, finding {fid}"
            if not _NAME.fullmatch(fid):
                raise UserError(f"{fw}: the finding's key must be a plain name (e.g. f1)")
            if f.shares not in ("sampled", "greedy"):
                raise UserError(f"{fw}: shares must be sampled or greedy, got {f.shares!r}")
            if not f.levels:
                raise UserError(f"{fw}: `levels` must hold at least one level")
            for label, level in f.levels.items():
                if level.cost <= 0:
                    raise UserError(f"{fw}, level {label}: cost must be > 0, got {level.cost}")
                if not _NAME.fullmatch(label):
                    raise UserError(f"{fw}: level {label!r} must use only letters, digits, '_', '.', '+', '-'")
                pre = level.pretrain or f.pretrain
                if pre not in self.pretrain:
                    raise UserError(f"{fw}, level {label}: pretraining {pre!r} is not in `pretrain:` "
                                    f"({', '.join(self.pretrain) or 'none'})")
                if not (level.rl_recipe or f.rl_recipe):
                    raise UserError(f"{fw}, level {label}: no RL recipe (rl_recipe)")
            labels = [e.label or f"eval{i}" for i, e in enumerate(f.evals)]
            for i, e in enumerate(f.evals):
                if not e.recipe:
                    raise UserError(f"{fw}: evals[{i}] needs a `recipe` (recipes/eval)")
                if labels[i] == FINAL or labels.count(labels[i]) > 1:
                    raise UserError(f"{fw}: evals[{i}]'s label {labels[i]!r} is taken (by another eval or the "
                                    f"study's final_eval)")
