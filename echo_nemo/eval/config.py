"""Typed config of `echo-nemo eval` (recipes/eval/*.yaml validate against EvalConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from echo_nemo.config import ParallelConfig, SamplingConfig
from echo_nemo.data.sources import BENCHMARKS
from echo_nemo.errors import UserError


@dataclass
class EvalSamplingConfig(SamplingConfig):
    """The sampled generations behind pass@k, maj@k and the format shares: `n` per problem
    with the shared sampling settings (the paper's temperature 0.7, top_p 0.95 by default)."""

    temperature: float = 0.7
    top_p: float = 0.95
    n: int = 8  # samples per problem (0: greedy only)


@dataclass
class EvalConfig:
    checkpoint: str = ""  # a checkpoint dir (…/checkpoints/step_N) or a run dir (its latest)
    # Over training (echo_nemo.eval.steps): `checkpoint` is a run dir and every kept checkpoint
    # of it is evaluated, step 0 (its model.init) included; `steps` picks steps instead.
    all_steps: bool = False
    steps: list[int] = field(default_factory=list)  # non-empty: evaluate these steps (implies all_steps)
    benchmarks: list[str] = field(default_factory=lambda: ["echolab"])
    data_paths: dict[str, str] = field(default_factory=dict)  # benchmark -> local file (default: built-in)
    limit: int | None = None  # first N problems of each benchmark (None: all)
    max_new_tokens: int = 256
    max_prompt_tokens: int | None = None
    greedy: bool = True  # greedy decoding for pass@1
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])  # pass@k reported for k <= n
    batch_size: int = 64
    seed: int = 0
    run_dir: str = "runs/eval"
    label: str = ""  # shown in reports, e.g. "before RL"
    save_samples: bool = True  # samples.jsonl with every generation, its format and reward
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # over steps: single-checkpoint eval dirs whose results stand in for a step that would
    # evaluate the same checkpoint with the same settings (a study's final evals)
    reuse: list[str] = field(default_factory=list)

    RENAMED: ClassVar[dict[str, str]] = {"tp": "parallel.tp"}

    @property
    def over_steps(self) -> bool:
        """Evaluate a run's checkpoints over training rather than one checkpoint."""
        return self.all_steps or bool(self.steps)

    def validate(self) -> None:
        # `checkpoint` may be empty in a recipe (it comes with --checkpoint): run_eval checks it
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown or not self.benchmarks:
            raise UserError(
                f"eval config: unknown benchmark(s) {unknown or '(none given)'}; expected some of {', '.join(BENCHMARKS)}"
            )
        bad_paths = [b for b in self.data_paths if b not in BENCHMARKS]
        if bad_paths:
            raise UserError(f"eval config: data_paths names unknown benchmark(s) {bad_paths}")
        if self.sampling.n < 0:
            raise UserError(f"eval config: sampling.n must be >= 0, got {self.sampling.n}")
        if self.sampling.n > 0:
            self.sampling.validate("eval config: sampling")
        if not self.greedy and self.sampling.n == 0:
            raise UserError("eval config: greedy=false and sampling.n=0 leave nothing to evaluate")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"eval config: limit must be >= 1 (got {self.limit})")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise UserError("eval config: max_new_tokens and batch_size must be >= 1")
        self.parallel.validate()
        if any(s < 0 for s in self.steps):
            raise UserError(f"eval config: steps must be checkpoint steps >= 0 (got {list(self.steps)})")
        if any(k < 1 for k in self.ks):
            raise UserError(f"eval config: ks must be positive (got {self.ks})")
