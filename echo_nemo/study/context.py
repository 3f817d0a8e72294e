"""The context an expectation's preconditions read, computed from the study's runs, never typed in.

Three families of keys (the names a precondition may use; `check_expectations` refuses
any other before anything runs):

    calibration/<k>    the calibrate stage's `Calibration.context()` of the pretraining of
                       the finding's first level, the mean over its pretraining seeds
                       (e.g. calibration/gap_top2: the two most accurate formats' gap);
                       `calibration/<k>@<level>` reads that level's pretraining instead
                       (a scale finding's base size need not be its first level)
    acc_before/min     min over the finding's levels of the pretrained model's final-eval
                       pass@1 on its first benchmark (each level: the mean over its
                       pretraining seeds)
    acc_before/hard    the pretrained models' pass@1 on the eval the expectation reads (its
                       `eval` label and benchmark), the mean over levels and pretraining seeds
    design/<name>      the design itself, from the runs' resolved configs (DESIGN below):
                       rl_epochs, evals_per_run, param_ratio, code_tokens_ratio_min/max,
                       eval_problems, checkpoints, steps_gap, same_final_eval,
                       ppo_critic_warmup_steps

A value that cannot be measured yet (a run not finished) is None: its precondition then
fails with "was not measured", and the expectation reads "not testable here".
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_nemo.data.catalog import ECHO_FORMATS
from echo_nemo.data.sources import BENCHMARKS, ECHOLAB_SETS, load_problems
from echo_nemo.errors import UserError
from echo_nemo.launch.config import resolve_path
from echo_nemo.model.scales import get_scale, padded_vocab_size, param_counts
from echo_nemo.schedule import log_spaced_steps
from echo_nemo.study.config import FINAL, StudyConfig
from echo_nemo.study.expectations import Expectation, load_expectations
from echo_nemo.study.quantities import QUANTITIES
from echo_nemo.study.runconf import run_config

CODE_FORMATS = ("tinygsm", "llm_code")  # the formats that hand the arithmetic to the interpreter
ACC_BEFORE = ("acc_before/min", "acc_before/hard")


@functools.cache
def prompt_set_size(name: str, limit: int | None) -> int:
    """Problems in an RL prompt set (data.train with data.train_limit)."""
    return len(load_problems(name, limit=limit))


def read_json(path: Path) -> dict[str, Any] | None:
    """A run's JSON output (results.json, calibration.json, manifest.json); None if not written yet."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError as e:
        raise UserError(f"{str(path)!r} is not valid JSON: {e}") from None


def pass1(results: dict[str, Any] | None, bench: str) -> float | None:
    """`benchmarks.<bench>.pass@1` of an eval's results.json (None if absent)."""
    v = ((results or {}).get("benchmarks", {}).get(bench) or {}).get("pass@1")
    return float(v) if isinstance(v, int | float) else None


def _mean(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


@dataclass
class FindingView:
    """One finding of a study folder (plan.json) as the context reads it."""

    study_dir: Path
    plan: dict[str, Any]
    fid: str
    runs: dict[str, dict[str, Any]] = field(init=False)
    _configs: dict[str, Any] = field(init=False, default_factory=dict)  # run key -> its resolved config
    _code_ratios: list[float] | None = field(init=False, default=None)  # computed once (min and max read it)

    def __post_init__(self) -> None:
        self.runs = {r["key"]: r for r in self.plan["runs"]}

    @property
    def finding(self) -> dict[str, Any]:
        return self.plan["findings"][self.fid]

    @property
    def members(self) -> list[dict[str, Any]]:
        return self.finding["members"]

    def eval_bench(self, label: str) -> str:
        """The first benchmark of the finding's eval `label` (its resolved config); the
        finding's benchmark when no run of it is planned."""
        keys = [m["evals"][label] for m in self.members if label in m["evals"]]
        return self.config(keys[0]).benchmarks[0] if keys else self.finding["benchmark"]

    def bench(self, e: Expectation) -> str:
        """The benchmark an expectation reads: its own, else the eval's it reads, else (a
        quantity of the RL rows) the finding's held-out benchmark."""
        if e.benchmark:
            return e.benchmark
        return self.finding["benchmark"] if QUANTITIES[e.quantity][0] == "rows" else self.eval_bench(e.eval)

    def config(self, key: str) -> Any:
        if key not in self._configs:
            self._configs[key] = run_config(self.runs[key]["argv"])
        return self._configs[key]

    def rl_configs(self) -> list[Any]:
        return [self.config(k) for k in dict.fromkeys(m["rl"] for m in self.members)]

    def level_members(self, level: str) -> list[dict[str, Any]]:
        return [m for m in self.members if m["level"] == level]

    def data_key(self, pretrain_key: str) -> str:
        return self.runs[pretrain_key]["after"][0]


# ----------------------------------------------------------------------------- design
def _rl_epochs(v: FindingView, e: Expectation) -> float | None:
    """min over the finding's RL runs of steps x prompts_per_step / prompt-set size."""
    out = []
    for c in v.rl_configs():
        size = prompt_set_size(c.data.train, c.data.train_limit)
        out.append(c.total_steps(size) * c.rollout.prompts_per_step / size)
    return min(out, default=None)


def _evals_per_run(v: FindingView, e: Expectation) -> float | None:
    """min over the RL runs of the held-out evals during RL: step 0 and every eval_every
    steps when it is set, and the last step."""
    out = []
    for c in v.rl_configs():
        total = c.total_steps(prompt_set_size(c.data.train, c.data.train_limit))
        every = c.eval_every
        out.append(1 + total // every + (total % every != 0) if every else 1)
    return min(out, default=None)


def _vocab(v: FindingView, pretrain_key: str) -> int | None:
    manifest = read_json(v.study_dir / v.data_key(pretrain_key) / "manifest.json")
    return padded_vocab_size(manifest["vocab_size"]) if manifest else None


def _param_ratio(v: FindingView, e: Expectation) -> float | None:
    """largest / smallest parameter count over the levels' model scales (scales.param_counts,
    the vocabulary of each level's data build)."""
    counts = []
    for pre in dict.fromkeys(m["pretrain"] for m in v.members):
        vocab = _vocab(v, pre)
        if vocab is None:
            return None
        counts.append(param_counts(get_scale(v.config(pre).model.scale), vocab)["params"])
    return max(counts) / min(counts) if counts else None


def code_tokens(manifest: dict[str, Any]) -> int:
    """Tokens of a data build's code sources (the echo sources of the tinygsm and llm_code formats)."""
    return sum(s["tokens"] for s in manifest["sources"] if ECHO_FORMATS.get(s["name"]) in CODE_FORMATS)


def code_tokens_seen(manifest: dict[str, Any], steps: int, global_batch: int) -> float:
    """Code tokens a pretraining sees: its tokens (steps x global batch x seq_length) times
    the code sources' share of its build's tokens."""
    total = sum(s["tokens"] for s in manifest["sources"])
    return steps * global_batch * manifest["seq_length"] * code_tokens(manifest) / total if total else 0.0


def _code_ratios(v: FindingView) -> list[float] | None:
    """Per level: code tokens its pretraining sees over the first level's (upweighting a
    format by adding it keeps this at 1 only when the steps grow with the mixture)."""
    if v._code_ratios is None:
        v._code_ratios = _read_code_ratios(v)
    return v._code_ratios


def _read_code_ratios(v: FindingView) -> list[float] | None:
    tokens = []
    for level in v.finding["levels"]:
        pre = v.level_members(level)[0]["pretrain"]
        manifest = read_json(v.study_dir / v.data_key(pre) / "manifest.json")
        if manifest is None:
            return None
        train = v.config(pre).train
        tokens.append(code_tokens_seen(manifest, train.steps, train.global_batch_size))
    return [t / tokens[0] for t in tokens] if tokens and tokens[0] else None


def _over_steps_eval(v: FindingView, e: Expectation) -> dict[str, Any] | None:
    """The plan run of the eval over steps the expectation reads (its label, else the first)."""
    keys = [k for m in v.members for lbl, k in m["evals"].items() if "--all-steps" in v.runs[k]["argv"]
            and (lbl == e.eval or e.eval == FINAL)]
    return v.runs[keys[0]] if keys else None


def _eval_problems(v: FindingView, e: Expectation) -> float | None:
    run = _over_steps_eval(v, e)
    if run is None:
        return None
    c = v.config(run["key"])
    return float(min(prompt_set_size(BENCHMARKS[b], c.limit) for b in c.benchmarks))


def _checkpoints(v: FindingView, e: Expectation) -> float | None:
    """Checkpoints the eval over steps reads: the RL run's kept log-spaced steps and step 0."""
    run = _over_steps_eval(v, e)
    if run is None:
        return None
    c = v.config(run["after"][0])
    return float(len(log_spaced_steps(c.total_steps(prompt_set_size(c.data.train, c.data.train_limit)),
                                      c.num_checkpoints)) + 1)


def _step_range(v: FindingView, problem_set: str, pretrain_key: str) -> tuple[int, int] | None:
    """(fewest, most) reasoning steps of an echo-lab set: its own range, else its corpus's;
    None for other sets (no step counts)."""
    if problem_set not in ECHOLAB_SETS:
        return None
    spec = ECHOLAB_SETS[problem_set]
    if spec.steps is not None:
        return spec.steps
    data = v.config(v.data_key(pretrain_key)).echolab
    return data.min_steps, data.max_steps


def _steps_gap(v: FindingView, e: Expectation) -> float | None:
    """The hard benchmark's fewest steps minus the RL prompt set's most (min over the runs);
    None unless both are echo-lab sets."""
    gaps = []
    for m in v.members:
        hard = _step_range(v, BENCHMARKS[v.bench(e)], m["pretrain"])
        prompts = _step_range(v, v.config(m["rl"]).data.train, m["pretrain"])
        if hard is None or prompts is None:
            return None
        gaps.append(hard[0] - prompts[1])
    return float(min(gaps)) if gaps else None


def _ppo_warmup(v: FindingView, e: Expectation) -> float | None:
    ppo = [c.ppo.critic_warmup_steps for c in v.rl_configs() if c.algorithm == "ppo"]
    return float(min(ppo)) if ppo else None


DESIGN: dict[str, Callable[[FindingView, Expectation], float | None]] = {
    "rl_epochs": _rl_epochs,
    "evals_per_run": _evals_per_run,
    "param_ratio": _param_ratio,
    "code_tokens_ratio_min": lambda v, e: min(r) if (r := _code_ratios(v)) else None,
    "code_tokens_ratio_max": lambda v, e: max(r) if (r := _code_ratios(v)) else None,
    "eval_problems": _eval_problems,
    "checkpoints": _checkpoints,
    "steps_gap": _steps_gap,
    "same_final_eval": lambda v, e: 1.0 if v.plan.get("final_eval") else 0.0,
    "ppo_critic_warmup_steps": _ppo_warmup,
}


# ----------------------------------------------------------------------------- measured
def calibration_level(quantity: str) -> tuple[str, str]:
    """`calibration/<k>@<level>` -> (`calibration/<k>`, level); no `@`: the level is ""."""
    key, _, level = quantity.partition("@")
    return key, level


def _calibration(v: FindingView, quantity: str) -> float | None:
    """Mean over pretraining seeds of the calibration context[key] of the level after `@`
    in the quantity, or of the finding's first level."""
    key, level = calibration_level(quantity)
    members = v.level_members(level or v.finding["levels"][0])
    cals = dict.fromkeys(m["calibration"] for m in members if m.get("calibration"))
    return _mean([((read_json(v.study_dir / c / "calibration.json") or {}).get("context") or {}).get(key)
                  for c in cals])


def _before(v: FindingView, level: str, label: str, bench: str) -> float | None:
    """Mean over the level's pretraining seeds of its pretrained model's pass@1 on eval `label`."""
    keys = dict.fromkeys(m["before"][label] for m in v.level_members(level) if label in m["before"])
    return _mean([pass1(read_json(v.study_dir / k / "results.json"), bench) for k in keys])


def _acc_before(v: FindingView, e: Expectation, which: str) -> float | None:
    if which == "acc_before/min":
        accs = [_before(v, lv, FINAL, v.eval_bench(FINAL)) for lv in v.finding["levels"]]
        return None if not accs or None in accs else min(accs)
    return _mean([_before(v, lv, e.eval, v.bench(e)) for lv in v.finding["levels"]])


def context(v: FindingView, e: Expectation) -> dict[str, float | None]:
    """Every key the expectation's preconditions name, computed from the runs (module docstring)."""
    out: dict[str, float | None] = {}
    for p in e.preconditions:
        q = p.quantity
        if q.startswith("calibration/"):
            out[q] = _calibration(v, q)
        elif q in ACC_BEFORE:
            out[q] = _acc_before(v, e, q)
        else:
            out[q] = DESIGN[q.removeprefix("design/")](v, e)
    return out


# ----------------------------------------------------------------------------- checks
def known_context(key: str) -> bool:
    return key.startswith("calibration/") or key in ACC_BEFORE or (
        key.startswith("design/") and key.removeprefix("design/") in DESIGN)


def check_expectations(cfg: StudyConfig) -> dict[str, Expectation]:
    """Load the study's expectations and check each against the recipe (exit 2 naming the
    problem): its finding exists, its contrast names that finding's levels, its quantity
    is registered and reads an eval the finding has, its preconditions name known context."""
    if not cfg.expectations:
        return {}
    path = resolve_path(cfg.expectations)
    if not path.is_file():
        raise UserError(f"study {cfg.name!r}: expectations file {cfg.expectations!r} not found (looked for {path})")
    expectations = load_expectations(path)
    for name, e in expectations.items():
        where = f"expectations.{name} ({cfg.expectations})"
        f = cfg.findings.get(e.finding)
        if f is None:
            raise UserError(f"{where}: finding {e.finding!r} is not in the study ({', '.join(cfg.findings)})")
        bad = [lv for lv in e.contrast if lv not in f.levels]
        if bad:
            raise UserError(f"{where}: contrast names {bad}, not levels of {e.finding} ({', '.join(f.levels)})")
        if e.quantity not in QUANTITIES:
            raise UserError(f"{where}: quantity {e.quantity!r} is not one the report computes "
                            f"({', '.join(QUANTITIES)})")
        _check_eval(cfg, e, where)
        if e.benchmark and e.benchmark not in BENCHMARKS:
            raise UserError(f"{where}: benchmark {e.benchmark!r} is not one of {', '.join(BENCHMARKS)}")
        for p in e.preconditions:
            if not known_context(p.quantity):
                raise UserError(f"{where}: precondition on {p.quantity!r}, which the study does not compute "
                                f"(calibration/*, {', '.join(ACC_BEFORE)}, design/{{{', '.join(DESIGN)}}})")
            level = calibration_level(p.quantity)[1] if p.quantity.startswith("calibration/") else ""
            if level and level not in f.levels:
                raise UserError(f"{where}: precondition on {p.quantity!r} names level {level!r}, not a level of "
                                f"{e.finding} ({', '.join(f.levels)})")
    return expectations


def _check_eval(cfg: StudyConfig, e: Expectation, where: str) -> None:
    """The eval the quantity reads exists, measures over steps when the quantity needs
    that, and has a run of the pretrained model when it compares before and after."""
    reads = QUANTITIES[e.quantity][0]
    if reads == "rows":
        return
    f = cfg.findings[e.finding]
    specs = {(s.label or f"eval{i}"): s for i, s in enumerate(f.evals)}
    if cfg.final_eval is not None:
        specs[FINAL] = cfg.final_eval
    spec = specs.get(e.eval)
    if spec is None:
        raise UserError(f"{where}: reads eval {e.eval!r}, which finding {e.finding} does not have "
                        f"({', '.join(specs) or 'no evals; set the study final_eval'})")
    if (reads == "over_steps") != spec.over_steps:
        need = "an eval over steps" if reads == "over_steps" else "an eval of the final model"
        raise UserError(f"{where}: {e.quantity} reads {need}; eval {e.eval!r} is not one")
    if reads == "before+after" and e.eval != FINAL and not spec.before:
        raise UserError(f"{where}: {e.quantity} compares before and after RL; eval {e.eval!r} needs `before: true`")
