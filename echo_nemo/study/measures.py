"""The study's measures: pure functions of a run's logged rows (`read_metrics`).

RL runs log one row per step with `format/<f>/share` (the step's sampled generations) and,
at their held-out evals, `acc/<bench>/pass@1` and `eval/format/<f>/share` (greedy). Eval
over a run's checkpoints (`echo-nemo eval --checkpoint RUN --all-steps`) logs one row per
checkpoint step with `acc/<bench>/pass@<k>`, `acc/<bench>/maj@<k>` and `format/<f>/...`.
`prefix` picks the shares: "" sampled (RL), "eval/" greedy held-out (RL).

Only solution formats (FORMATS without `other`) can be a run's "top format": unclassifiable
output never wins (as in the quickstart's summary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from echo_nemo.reward.formats import FORMATS

Rows = Sequence[dict[str, Any]]
SOLUTION_FORMATS = tuple(f for f in FORMATS if f != "other")
COLLAPSE_SHARE = 0.9  # the study's "one format takes >= 90% of generations"


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def share_rows(rows: Rows, prefix: str = "") -> list[tuple[int, dict[str, float]]]:
    """(step, {format: share}) for every row that logs any `<prefix>format/<f>/share`,
    in step order; a format missing from a row counts 0 there."""
    out = []
    for r in rows:
        shares = {f: r.get(f"{prefix}format/{f}/share") for f in SOLUTION_FORMATS}
        if any(_number(v) for v in shares.values()):
            out.append((int(r["step"]), {f: float(v) if _number(v) else 0.0 for f, v in shares.items()}))
    return sorted(out, key=lambda x: x[0])


def top_format(shares: dict[str, float]) -> tuple[str, float]:
    """argmax_f share(f) over the solution formats (ties: the earlier name in FORMATS)."""
    best = max(SOLUTION_FORMATS, key=lambda f: (shares.get(f, 0.0), -FORMATS.index(f)))
    return best, shares.get(best, 0.0)


def collapse_step(rows: Rows, prefix: str = "", threshold: float = COLLAPSE_SHARE) -> int | None:
    """The first logged step s with share_F(s') >= threshold at s and at every later logged
    step s', where F is the top format at the last logged step; None if share_F(last) < threshold
    (or is 0: no solution format at all).

    (Only F can hold >= 0.9 at the end, so F is the only candidate.)
    """
    logged = share_rows(rows, prefix)
    if not logged:
        return None
    fmt, share = top_format(logged[-1][1])
    if share < threshold or share <= 0:
        return None
    step = logged[-1][0]
    for s, shares in reversed(logged):
        if shares[fmt] < threshold:
            break
        step = s
    return step


def metric_series(rows: Rows, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over the rows that log it, in step order."""
    pairs = sorted((int(r["step"]), float(r[key])) for r in rows if _number(r.get(key)))
    return [s for s, _ in pairs], [v for _, v in pairs]


def largest_gain_step(rows: Rows, key: str) -> int | None:
    """The step s_i of argmax_i (v_i - v_{i-1}) over consecutive logged values of `key`
    (the later step of the pair with the largest rise; the first such pair on ties);
    None with fewer than two values or when no pair rises."""
    steps, values = metric_series(rows, key)
    best, best_gain = None, 0.0
    for i in range(1, len(values)):
        gain = values[i] - values[i - 1]
        if gain > best_gain:
            best, best_gain = steps[i], gain
    return best


def last_value(rows: Rows, key: str) -> float | None:
    _, values = metric_series(rows, key)
    return values[-1] if values else None


def pass_at_k_over_steps(rows: Rows, bench: str, k: int, kind: str = "pass") -> tuple[list[int], list[float]]:
    """`acc/<bench>/<kind>@<k>` against checkpoint step, from an eval-over-steps metrics.jsonl
    (kind: pass or maj)."""
    return metric_series(rows, f"acc/{bench}/{kind}@{k}")


def late_drop(steps_values: tuple[list[int], list[float]]) -> float | None:
    """max_i v_i - v_last: how far a curve (e.g. pass@64 over steps) ends below its peak; None if empty."""
    _, values = steps_values
    return max(values) - values[-1] if values else None


def ks_logged(rows: Rows, bench: str, kind: str = "pass") -> list[int]:
    """Every k with `acc/<bench>/<kind>@<k>` in the rows, ascending."""
    head = f"acc/{bench}/{kind}@"
    return sorted({int(key[len(head):]) for r in rows for key in r if key.startswith(head) and key[len(head):].isdigit()})


@dataclass(frozen=True)
class Spread:
    """mean, sample standard deviation (n-1; 0 for one value), min, max over n values."""

    n: int
    mean: float | None
    sd: float | None
    lo: float | None
    hi: float | None

    def text(self, fmt: str = "{:.2f}") -> str:
        if not self.n:
            return "–"
        body = fmt.format(self.mean)
        if self.n > 1:
            body += " ± " + fmt.format(self.sd)
        return f"{body} (n={self.n})"


def spread(values: Sequence[float | None]) -> Spread:
    """Across seeds: mean = sum x / n, sd = sqrt(sum (x - mean)^2 / (n - 1)); None values
    (e.g. a seed that never collapsed) are left out and n counts the rest."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return Spread(0, None, None, None, None)
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return Spread(len(xs), mean, sd, min(xs), max(xs))
