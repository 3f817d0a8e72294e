"""The per-run quantities the pre-registered expectations name (recipes/study/_echolab_expectations.yaml).

Pure functions of one RL run's records: `before` and `after` are results.json of the same
eval (same problems, decoding and samples) of the pretrained model and of the run's final
model, so every level and every algorithm is measured alike; `rows` are the run's logged
rows (metrics.jsonl), whose held-out greedy evals during RL log `eval/format/<f>/share` and
`acc/<bench>/pass@1`; `over_steps` are the rows of an eval over the run's checkpoints.

Shares are of solution formats among all generations (`other` counts in the denominator
and never wins), by default of the greedy generations (`mode="greedy"`), else the sampled.
Epochs count passes over the RL prompt set: epochs(step) = step * prompts_per_step / set_size.

`QUANTITIES` registers them by the names expectations use, each a function of one
`RunRecord`, the eval label it reads (default `final`: the study's final eval, the same for
every level and algorithm) and the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from echo_nemo.study.measures import (
    SOLUTION_FORMATS,
    collapse_step,
    ks_logged,
    largest_gain_step,
    late_drop,
    pass_at_k_over_steps,
    share_rows,
    top_format,
)

Results = dict[str, Any]


def shares(results: Results, bench: str, mode: str = "greedy") -> dict[str, float]:
    """{format: share} of one benchmark of an eval's results.json (greedy or sampled)."""
    b = results["benchmarks"][bench]
    stats = b.get("greedy_formats", b["formats"]) if mode == "greedy" else b["formats"]
    return {f: float(stats[f]["share"]) for f in SOLUTION_FORMATS}


def share_change(before: Results, after: Results, bench: str, fmt: str, mode: str = "greedy") -> float:
    """share_fmt(after) - share_fmt(before): the RL-caused change of one format's share
    (text_share_change is fmt = text)."""
    return shares(after, bench, mode)[fmt] - shares(before, bench, mode)[fmt]


def top_share_final(after: Results, bench: str, mode: str = "greedy") -> float:
    """max_f share_f(after) over the solution formats."""
    return top_format(shares(after, bench, mode))[1]


def top_share_change(before: Results, after: Results, bench: str, mode: str = "greedy") -> float:
    """share_F(after) - share_F(before), F the top format after RL: how far RL moved onto it."""
    fmt, share = top_format(shares(after, bench, mode))
    return share - shares(before, bench, mode)[fmt]


def minority_share_final(after: Results, bench: str, mode: str = "greedy") -> float:
    """sum_{f != F} share_f(after), F the top format after RL (`other` not counted)."""
    s = shares(after, bench, mode)
    fmt, _ = top_format(s)
    return sum(v for f, v in s.items() if f != fmt)


def wins(after: Results, bench: str, fmt: str, mode: str = "greedy") -> float:
    """1.0 if `fmt` is the top format after RL, else 0.0 (text_wins is fmt = text)."""
    return 1.0 if top_format(shares(after, bench, mode))[0] == fmt else 0.0


def acc_final(after: Results, bench: str) -> float:
    """Greedy pass@1 of the final model."""
    return float(after["benchmarks"][bench]["pass@1"])


def acc_change(before: Results, after: Results, bench: str) -> float:
    """pass@1(after) - pass@1(before) (hard_acc_change on the harder benchmark)."""
    return acc_final(after, bench) - acc_final(before, bench)


def epochs(step: float, prompts_per_step: int, set_size: int) -> float:
    """step * prompts_per_step / set_size."""
    if prompts_per_step < 1 or set_size < 1:
        raise ValueError(f"prompts_per_step and set_size must be >= 1, got {prompts_per_step}, {set_size}")
    return step * prompts_per_step / set_size


def collapse_epoch(rows: list[dict], prompts_per_step: int, set_size: int, prefix: str = "eval/") -> float | None:
    """The collapse step (measures.collapse_step: the final top format >= 90% from it to the
    end) in epochs; a run that never collapses counts as its last step's epochs + 1 (later
    than any collapse it could have shown); None without logged shares."""
    logged = share_rows(rows, prefix)
    if not logged:
        return None
    step = collapse_step(rows, prefix)
    if step is None:
        return epochs(logged[-1][0], prompts_per_step, set_size) + 1.0
    return epochs(step, prompts_per_step, set_size)


def collapse_window(rows: list[dict], prefix: str = "eval/", start_share: float = 0.5) -> tuple[int, int] | None:
    """[first logged step where the final top format's share exceeds `start_share`, its
    collapse step]; None if the run never collapses (>= 90% to the end)."""
    end = collapse_step(rows, prefix)
    if end is None:
        return None
    logged = share_rows(rows, prefix)
    fmt, _ = top_format(logged[-1][1])
    start = next(s for s, sh in logged if sh[fmt] > start_share or s == end)
    return start, end


def gain_window_distance(rows: list[dict], bench: str, prompts_per_step: int, set_size: int,
                         prefix: str = "eval/") -> float | None:
    """Distance in epochs from the largest held-out accuracy gain's step g to the collapse
    window [a, b]: max(0, a - g, g - b), 0 inside it (two-sided: before and after count).
    None if the run never collapses or its accuracy never rises (no window, no gain)."""
    window = collapse_window(rows, prefix)
    gain = largest_gain_step(rows, f"acc/{bench}/pass@1")
    if window is None or gain is None:
        return None
    a, b = window
    return epochs(max(0, a - gain, gain - b), prompts_per_step, set_size)


def passk_late_drop(over_steps: list[dict], bench: str) -> float | None:
    """max_i pass@k_i - pass@k_last for the largest k logged over the checkpoints."""
    ks = ks_logged(over_steps, bench)
    return late_drop(pass_at_k_over_steps(over_steps, bench, ks[-1])) if ks else None


def share_instability(rows: list[dict], prefix: str = "eval/") -> float | None:
    """mean_i |share_F(s_i) - share_F(s_{i-1})| over consecutive logged steps, F the final top
    format: how much the winner's share moves from eval to eval; None with < 2 evals."""
    logged = share_rows(rows, prefix)
    if len(logged) < 2:
        return None
    fmt, _ = top_format(logged[-1][1])
    path = [sh[fmt] for _, sh in logged]
    return sum(abs(b - a) for a, b in zip(path, path[1:])) / (len(path) - 1)



@dataclass
class RunRecord:
    """One finished RL run as the report reads it: its level and seeds, its logged rows, the
    results of each eval of its final model (label -> results.json, or the rows of an eval
    over its checkpoints), the same evals of the pretrained model it started from, and what
    epochs need (prompts per step, RL prompt-set size)."""

    level: str
    pretrain_seed: int
    seed: int
    rows: list[dict] = field(default_factory=list)
    after: dict[str, Results] = field(default_factory=dict)
    over_steps: dict[str, list[dict]] = field(default_factory=dict)
    before: dict[str, Results] = field(default_factory=dict)
    bench: str = "echolab"  # the RL run's held-out benchmark (acc/<bench>/pass@1 in `rows`)
    prompts_per_step: int = 1
    set_size: int = 1


Quantity = Callable[[RunRecord, str, str], "float | None"]


def _of(results: Results | None, bench: str) -> Results | None:
    """The results when they hold `bench`, else None (that eval did not measure it)."""
    return results if results and bench in results.get("benchmarks", {}) else None


def _pair(r: RunRecord, label: str, bench: str) -> tuple[Results, Results] | None:
    before, after = _of(r.before.get(label), bench), _of(r.after.get(label), bench)
    return (before, after) if before and after else None


def _after_only(fn: Callable[[Results, str], float]) -> Quantity:
    def q(r: RunRecord, label: str, bench: str) -> float | None:
        after = _of(r.after.get(label), bench)
        return fn(after, bench) if after else None
    return q


def _before_after(fn: Callable[[Results, Results, str], float]) -> Quantity:
    def q(r: RunRecord, label: str, bench: str) -> float | None:
        pair = _pair(r, label, bench)
        return fn(*pair, bench) if pair else None
    return q


# name -> (what it reads, function of (run record, eval label, benchmark)). What it reads:
# "after" the eval `label` of the final model, "before+after" that eval of the pretrained
# model too, "over_steps" the eval `label` over the run's checkpoints, "rows" the RL run's
# own held-out evals (label and benchmark: the run's).
QUANTITIES: dict[str, tuple[str, Quantity]] = {
    "top_share_final": ("after", _after_only(top_share_final)),
    "minority_share_final": ("after", _after_only(minority_share_final)),
    "text_wins": ("after", _after_only(lambda a, b: wins(a, b, "text"))),
    "acc_final": ("after", _after_only(acc_final)),
    "top_share_change": ("before+after", _before_after(top_share_change)),
    "text_share_change": ("before+after", _before_after(lambda b, a, bench: share_change(b, a, bench, "text"))),
    "hard_acc_change": ("before+after", _before_after(acc_change)),
    "passk_late_drop": ("over_steps", lambda r, label, bench: passk_late_drop(r.over_steps.get(label, []), bench)),
    "collapse_epoch": ("rows", lambda r, label, bench: collapse_epoch(r.rows, r.prompts_per_step, r.set_size)),
    "gain_window_distance": ("rows", lambda r, label, bench: gain_window_distance(
        r.rows, r.bench, r.prompts_per_step, r.set_size)),
    "share_instability": ("rows", lambda r, label, bench: share_instability(r.rows)),
}


def quantity(name: str, record: RunRecord, label: str, bench: str) -> float | None:
    """The per-run value of a registered quantity (None: this run does not measure it)."""
    return QUANTITIES[name][1](record, label, bench)
