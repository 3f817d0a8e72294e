"""Pre-registered expectations: what each finding expects, written before anything runs.

An `Expectation` names one per-run quantity (e.g. the RL-caused change of the text share,
after minus before), which levels of the finding it compares, the direction the paper's
claim predicts, the null value (`null_value`), the paper's effect size or a minimal
effect of interest, and the preconditions without which the comparison means nothing
(e.g. the formats' accuracies within 5 points before RL). `evaluate` turns per-run
measurements into the verdict of `stats.verdict` with its interval, and keeps the
expectation's text beside it so the report prints what was expected next to what was
found (`evaluate_all` and `table`: one row per expectation; `group_runs` groups per-run
values by pretraining seed).

The quantity compared, by `contrast`:

    []       mean over the runs of every level (pooled)
    [L]      mean over the runs of level L
    [A, B]   mean(B) - mean(A), the two levels resampled independently

A recipe carries them as an `expectations:` section, loaded with `load_expectations`
(recipes/study/_echolab_expectations.yaml holds the echo-lab study's):

    expectations:
      f2_text_shift:
        finding: f2
        claim: 150M models converge to TinyGSM code, 1B models to natural language
        expectation: the larger model's text share rises more under RL than the smaller one's
        quantity: text_share_change      # per run: text share after RL minus before
        contrast: [tiny, large]          # mean(large) - mean(tiny)
        direction: 1
        effect: 0.2
        preconditions:
          - {quantity: calibration/gap_top2, op: "<=", value: 0.05, text: two strongest formats within 5 points}
"""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from echo_nemo.config import load_recipe
from echo_nemo.errors import UserError
from echo_nemo.study.stats import (
    Groups,
    Interval,
    Outcome,
    difference_interval,
    mean_interval,
    verdict,
)

OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
EFFECT_SOURCES = ("paper", "minimal")


@dataclass
class Precondition:
    """`context[quantity] op value` must be true before the comparison is made."""

    quantity: str = "???"  # a key of the context (e.g. calibration/gap_top2, acc_before/echolab_hard)
    op: str = "<="
    value: float = 0.0
    text: str = ""  # what it guards, in words

    def check(self, context: Mapping[str, float]) -> str | None:
        """None when it holds, else the reason it failed (a missing quantity fails too)."""
        what = self.text or f"{self.quantity} {self.op} {self.value:g}"
        if self.quantity not in context or context[self.quantity] is None:
            return f"{what}: {self.quantity} was not measured"
        got = float(context[self.quantity])
        if not OPS[self.op](got, self.value):
            return f"{what}: {self.quantity} = {got:.3g}, needs {self.op} {self.value:g}"
        return None


@dataclass
class Expectation:
    finding: str = "???"  # the finding's id in the study recipe (f1..f6)
    claim: str = ""  # the paper's claim, as the paper states it
    expectation: str = ""  # the pre-registered direction, in words
    quantity: str = "???"  # the per-run measurement compared (a name of quantities.QUANTITIES)
    eval: str = "final"  # the label of the eval whose results it reads (final: the study's final eval)
    benchmark: str = ""  # the benchmark it reads; "" = the finding's
    contrast: list[str] = field(default_factory=list)  # [], [level] or [a, b] (b - a)
    direction: int = 1  # +1: the quantity (or b - a) is expected above the null; -1: below
    null_value: float = 0.0  # the null (`null` itself is YAML's None)
    effect: float = 0.0  # the paper's effect size, or a minimal effect of interest (>= 0)
    effect_source: str = "minimal"  # paper | minimal
    preconditions: list[Precondition] = field(default_factory=list)
    min_runs: int = 2  # runs needed in each compared level (fewer: not testable here)

    def validate(self, where: str) -> None:
        if self.direction not in (1, -1):
            raise UserError(f"{where}.direction must be 1 or -1, got {self.direction}")
        if len(self.contrast) > 2:
            raise UserError(f"{where}.contrast takes [], [level] or [a, b], got {self.contrast}")
        if self.effect < 0:
            raise UserError(f"{where}.effect must be >= 0 (a size in the expected direction), got {self.effect}")
        if self.effect_source not in EFFECT_SOURCES:
            raise UserError(f"{where}.effect_source must be one of {', '.join(EFFECT_SOURCES)}, "
                            f"got {self.effect_source!r}")
        if self.min_runs < 1:
            raise UserError(f"{where}.min_runs must be >= 1, got {self.min_runs}")
        if not self.expectation or self.finding == "???" or self.quantity == "???":
            raise UserError(f"{where}: needs `finding`, `quantity` and the `expectation` in words")
        for i, p in enumerate(self.preconditions):
            if p.op not in OPS:
                raise UserError(f"{where}.preconditions[{i}].op must be one of {', '.join(OPS)}, got {p.op!r}")
            if p.quantity == "???":
                raise UserError(f"{where}.preconditions[{i}] needs a `quantity`")

    def compared(self) -> str:
        """The compared quantity in words: `q`, `q at L`, or `q(b) - q(a)`."""
        if len(self.contrast) == 2:
            a, b = self.contrast
            return f"{self.quantity}({b}) - {self.quantity}({a})"
        return f"{self.quantity} at {self.contrast[0]}" if self.contrast else self.quantity


@dataclass
class ExpectationSet:
    """The `expectations:` section of a recipe: name -> Expectation."""

    expectations: dict[str, Expectation] = field(default_factory=dict)

    def validate(self) -> None:
        for name, e in self.expectations.items():
            e.validate(f"expectations.{name}")


def load_expectations(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Expectation]:
    """The recipe's `expectations:` section, typed and validated (an unknown key or a bad
    value raises UserError, exit 2)."""
    return load_recipe(ExpectationSet, path, overrides).expectations


@dataclass(frozen=True)
class Evaluated:
    """An expectation with its verdict, for the report: what was expected next to what was found."""

    name: str
    expectation: Expectation
    outcome: Outcome
    runs: Mapping[str, Groups] = field(default_factory=dict)  # compared level -> values by pretraining seed

    def by_seed(self) -> str:
        """Each compared level's mean per pretraining seed, e.g. `1x: 0.120 / 0.310`: two
        pretrainings that disagree widen the interval less than they should (docs/study.md,
        Intervals), so the report shows them."""
        return "; ".join(f"{lv}: " + " / ".join(f"{sum(g) / len(g):+.3f}" for g in groups)
                         for lv, groups in self.runs.items() if groups) or "-"

    def line(self) -> str:
        e, o = self.expectation, self.outcome
        side = ">" if e.direction > 0 else "<"
        found = o.interval.text() if o.interval else "no interval"
        return (f"{e.finding} {self.name}: expected {e.expectation} ({e.compared()} {side} {e.null_value:g}; "
                f"{e.effect_source} effect {e.effect:g}) -> {o.verdict}: {found}; {o.reason}")


def _interval(e: Expectation, runs: Mapping[str, Groups], seed: int, resamples: int) -> Interval:
    if len(e.contrast) == 2:
        a, b = e.contrast
        return difference_interval(runs[a], runs[b], seed=seed, resamples=resamples)
    if e.contrast:
        return mean_interval(runs[e.contrast[0]], seed=seed, resamples=resamples)
    pooled = [g for groups in runs.values() for g in groups]
    return mean_interval(pooled, seed=seed, resamples=resamples)


def evaluate(name: str, e: Expectation, runs: Mapping[str, Groups], context: Mapping[str, float] | None = None,
             *, seed: int = 0, resamples: int = 10_000) -> Evaluated:
    """The verdict of one expectation: preconditions on `context` first, then the runs each
    compared level needs, then the interval and `stats.verdict`.

    `runs`: level -> the quantity's per-run values, grouped by pretraining seed (stats.Groups).
    """
    failed = [r for p in e.preconditions if (r := p.check(context or {})) is not None]
    levels: Sequence[str] = e.contrast or list(runs)
    if not levels:
        failed.append(f"no level measured {e.quantity}")
    for lv in levels:
        n = sum(len(g) for g in runs.get(lv, []))
        if n < e.min_runs:
            failed.append(f"level {lv}: {n} run(s) measured {e.quantity}, needs >= {e.min_runs}")
    compared = {lv: runs.get(lv, []) for lv in levels}
    if failed:
        return Evaluated(name, e, verdict(None, direction=e.direction, failed=failed), compared)
    iv = _interval(e, runs, seed, resamples)
    return Evaluated(name, e, verdict(iv, direction=e.direction, null=e.null_value, effect=e.effect), compared)


def group_runs(runs: Sequence[tuple[Any, float | None]]) -> list[list[float]]:
    """(pretraining seed, value) per run -> values grouped by pretraining seed (stats.Groups),
    in first-seen order; runs without a value (None: e.g. a run that never collapsed, for a
    quantity it leaves undefined) are left out, and a seed left with no run is dropped."""
    groups: dict[Any, list[float]] = {}
    for seed, value in runs:
        if value is not None:
            groups.setdefault(seed, []).append(float(value))
    return list(groups.values())


def evaluate_all(expectations: Mapping[str, Expectation], values: Mapping[str, Mapping[str, Groups]],
                 context: Mapping[str, float] | None = None, *, seed: int = 0,
                 resamples: int = 10_000) -> list[Evaluated]:
    """Every expectation in order; `values[name]` is its level -> Groups (a missing name is
    evaluated on no runs: not testable here)."""
    return [evaluate(name, e, values.get(name, {}), context, seed=seed, resamples=resamples)
            for name, e in expectations.items()]


def table(evaluated: Sequence[Evaluated]) -> str:
    """Markdown: per expectation the paper's claim, what was expected, the verdict, the
    estimate with its interval, and why."""
    lines = ["| finding | the paper's claim | expected (before the runs) | verdict | estimate [95% CI] | why |",
             "|---|---|---|---|---|---|"]
    for ev in evaluated:
        e, o = ev.expectation, ev.outcome
        iv = o.interval
        found = f"{iv.estimate:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}], {iv.runs} runs" if iv else "-"
        lines.append(f"| {e.finding} | {e.claim} | {e.expectation} ({e.compared()} {'>' if e.direction > 0 else '<'} "
                     f"{e.null_value:g}) | {o.verdict} | {found} | {o.reason} |")
    return "\n".join(lines)
