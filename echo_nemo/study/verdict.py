"""Verdicts: each finding's claim checked against the measures by an explicit rule (pure).

Input: the finding's levels in recipe order, each a list of `Seed` (one RL run: its
measures, and its evals). Output: a `Verdict` with the measured numbers as text and one
of HOLDS / NOT_HOLDS / MIXED / NOT_MEASURED. A rule made of several parts says HOLDS when
every part it could measure is true, DOES NOT HOLD when every one is false, MIXED otherwise.
The rules, one per finding kind:

- collapse: a seed collapses if its top format's share is >= 0.9 from some step to the end
  (measures.collapse_step). HOLDS if every seed collapses and, in at least half of them,
  the largest rise of held-out accuracy ends no later than the collapse step + 25% of the
  run's steps ("coincides"); NOT if no seed collapses; MIXED otherwise.
- scale: each level's winner is the final top format of most of its seeds (none on a tie).
  HOLDS if every level has a winner and they are not all the same; NOT if every level has
  the same winner; MIXED otherwise (seeds split); not measured with fewer than two sizes.
- mixture: parts (a) the winner of the last level (most repeats) differs from the first
  level's; (b) mean final accuracy of the last level is below the first level's.
- kl: levels ordered by their numeric label. Parts (a) mean minority-format share retained
  at the largest KL > at the smallest; (b) where eval over steps exists, the late drop of
  pass@k_max (peak minus final) at the largest KL <= at the smallest.
- transfer: gain = after - before on the finding's benchmark (the `before: true` eval of
  the pretrained model vs the same eval of the RL run). HOLDS if every seed gains; NOT if
  the mean gain <= 0; MIXED otherwise.
- algorithms (levels named ppo, grpo, ei): parts (a) GRPO and PPO each collapse in at
  least half their seeds; (b) GRPO's spread (sd of final top share across seeds) > PPO's;
  (c) EI's mean final top share < PPO's and its mean final accuracy < PPO's. Parts whose
  levels are missing are not measured.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from echo_nemo.study.measures import ks_logged, late_drop, pass_at_k_over_steps, spread

HOLDS, NOT_HOLDS, MIXED, NOT_MEASURED = "holds", "does not hold", "mixed", "not measured"


@dataclass
class Seed:
    """One RL run of a level: its measures (measures.run_measures) and evals."""

    seed: int
    measures: dict[str, Any]
    over_steps: list[dict[str, Any]] = field(default_factory=list)  # eval-over-steps rows
    after: dict[str, Any] | None = None  # results.json of the eval after RL
    before: dict[str, Any] | None = None  # results.json of the same eval of the pretrained model


@dataclass
class Verdict:
    verdict: str
    measured: str
    seeds: int


def combine(parts: list[bool]) -> str:
    if not parts:
        return NOT_MEASURED
    if all(parts):
        return HOLDS
    if not any(parts):
        return NOT_HOLDS
    return MIXED


def _vals(seeds: list[Seed], key: str) -> list[Any]:
    return [s.measures.get(key) for s in seeds]


def winner(seeds: list[Seed]) -> str | None:
    """The final top format of most seeds; None on a tie or with no formats."""
    counts = Counter(f for f in _vals(seeds, "top_format") if f)
    if not counts:
        return None
    top = counts.most_common(2)
    return None if len(top) > 1 and top[0][1] == top[1][1] else top[0][0]


def _n(levels: dict[str, list[Seed]]) -> int:
    return max((len(v) for v in levels.values()), default=0)


def collapse(levels: dict[str, list[Seed]]) -> Verdict:
    seeds = [s for v in levels.values() for s in v]
    collapsed = [s for s in seeds if s.measures.get("collapse_step") is not None]
    coincide = [s for s in collapsed if s.measures.get("gain_step") is not None
                and s.measures["gain_step"] <= s.measures["collapse_step"] + math.ceil(0.25 * s.measures["steps"])]
    if not seeds:
        return Verdict(NOT_MEASURED, "no runs", 0)
    if collapsed and len(collapsed) == len(seeds) and 2 * len(coincide) >= len(collapsed):
        v = HOLDS
    elif not collapsed:
        v = NOT_HOLDS
    else:
        v = MIXED
    tops = Counter(f for f in _vals(seeds, "top_format") if f)
    text = (f"collapsed (>= 90% from a step to the end) in {len(collapsed)}/{len(seeds)} seeds, at step "
            f"{spread(_vals(collapsed, 'collapse_step')).text('{:.1f}')}; final top format "
            f"{', '.join(f'{f} x{c}' for f, c in tops.most_common())} at share {spread(_vals(seeds, 'top_share')).text()}; "
            f"largest accuracy gain at step {spread(_vals(seeds, 'gain_step')).text('{:.1f}')}, "
            f"by the collapse step + 25% of the run in {len(coincide)}/{len(collapsed)}")
    return Verdict(v, text, len(seeds))


def scale(levels: dict[str, list[Seed]]) -> Verdict:
    winners = {lv: winner(s) for lv, s in levels.items()}
    if len(levels) < 2:  # one size alone cannot show that size decides
        return Verdict(NOT_MEASURED, "needs two or more scales", _n(levels))
    found = [w for w in winners.values() if w]
    if len(found) == len(winners) and len(set(found)) > 1:
        v = HOLDS
    elif len(found) == len(winners) and len(set(found)) == 1:
        v = NOT_HOLDS
    else:
        v = MIXED
    text = "; ".join(f"{lv}: {winners[lv] or 'split'} (share {spread(_vals(s, 'top_share')).text()}, "
                     f"acc {spread(_vals(s, 'acc_last')).text()})" for lv, s in levels.items())
    return Verdict(v, text, _n(levels))


def mixture(levels: dict[str, list[Seed]]) -> Verdict:
    if len(levels) < 2:
        return Verdict(NOT_MEASURED, "needs two or more mixtures", _n(levels))
    labels = list(levels)
    first, last = levels[labels[0]], levels[labels[-1]]
    acc_first, acc_last = spread(_vals(first, "acc_last")).mean, spread(_vals(last, "acc_last")).mean
    parts = [winner(last) != winner(first)]
    if acc_first is not None and acc_last is not None:
        parts.append(acc_last < acc_first)
    text = "; ".join(f"{lv}: winner {winner(s) or 'split'}, final acc {spread(_vals(s, 'acc_last')).text()}"
                     for lv, s in levels.items())
    return Verdict(combine(parts), text, _n(levels))


def _kl_value(label: str, index: int) -> float:
    try:
        return float(label)
    except ValueError:
        return float(index)


def _pass_k_drop(seeds: list[Seed], bench: str) -> float | None:
    drops = []
    for s in seeds:
        ks = ks_logged(s.over_steps, bench)
        if ks:
            drops.append(late_drop(pass_at_k_over_steps(s.over_steps, bench, ks[-1])))
    return spread(drops).mean


def kl(levels: dict[str, list[Seed]], bench: str) -> Verdict:
    if len(levels) < 2:
        return Verdict(NOT_MEASURED, "needs two or more KL coefficients", _n(levels))
    order = sorted(levels, key=lambda lv: _kl_value(lv, list(levels).index(lv)))
    lo, hi = levels[order[0]], levels[order[-1]]
    m_lo, m_hi = spread(_vals(lo, "minority_share")).mean, spread(_vals(hi, "minority_share")).mean
    parts = []
    if m_lo is not None and m_hi is not None:
        parts.append(m_hi > m_lo)
    d_lo, d_hi = _pass_k_drop(lo, bench), _pass_k_drop(hi, bench)
    if d_lo is not None and d_hi is not None:
        parts.append(d_hi <= d_lo)
    text = "; ".join(
        f"KL {lv}: minority share {spread(_vals(levels[lv], 'minority_share')).text()}"
        + (f", pass@k late drop {_pass_k_drop(levels[lv], bench):.3f}" if _pass_k_drop(levels[lv], bench) is not None else "")
        + f", acc {spread(_vals(levels[lv], 'acc_last')).text()}" for lv in order)
    return Verdict(combine(parts), text, _n(levels))


def pass1(results: dict[str, Any] | None, bench: str) -> float | None:
    """`benchmarks.<bench>.pass@1` of an eval's results.json (None if absent)."""
    b = (results or {}).get("benchmarks", {}).get(bench) or {}
    v = b.get("pass@1")
    return float(v) if isinstance(v, int | float) else None


def transfer(levels: dict[str, list[Seed]], bench: str) -> Verdict:
    seeds = [s for v in levels.values() for s in v]
    gains, befores, afters = [], [], []
    for s in seeds:
        b, a = pass1(s.before, bench), pass1(s.after, bench)
        if b is not None and a is not None:
            gains.append(a - b)
            befores.append(b)
            afters.append(a)
    if not gains:
        return Verdict(NOT_MEASURED, f"no before/after evals on {bench}", len(seeds))
    mean = sum(gains) / len(gains)
    v = HOLDS if all(g > 0 for g in gains) else NOT_HOLDS if mean <= 0 else MIXED
    text = (f"{bench} pass@1 before {spread(befores).text('{:.3f}')} -> after {spread(afters).text('{:.3f}')}; "
            f"gain {spread(gains).text('{:+.3f}')}, positive in {sum(g > 0 for g in gains)}/{len(gains)} seeds")
    return Verdict(v, text, len(seeds))


def algorithms(levels: dict[str, list[Seed]]) -> Verdict:
    ppo, grpo, ei = levels.get("ppo"), levels.get("grpo"), levels.get("ei")
    parts, notes = [], []

    def collapses(seeds: list[Seed]) -> bool:
        return 2 * sum(s.measures.get("collapse_step") is not None for s in seeds) >= len(seeds)

    if ppo and grpo:
        parts.append(collapses(ppo) and collapses(grpo))
        if len(ppo) > 1 and len(grpo) > 1:
            parts.append(spread(_vals(grpo, "top_share")).sd > spread(_vals(ppo, "top_share")).sd)
    if ppo and ei:
        s_ppo, s_ei = spread(_vals(ppo, "top_share")).mean, spread(_vals(ei, "top_share")).mean
        a_ppo, a_ei = spread(_vals(ppo, "acc_last")).mean, spread(_vals(ei, "acc_last")).mean
        if None not in (s_ppo, s_ei, a_ppo, a_ei):
            parts.append(s_ei < s_ppo and a_ei < a_ppo)
    for lv, seeds in levels.items():
        n_col = sum(s.measures.get("collapse_step") is not None for s in seeds)
        notes.append(f"{lv}: collapsed {n_col}/{len(seeds)} at step {spread(_vals(seeds, 'collapse_step')).text('{:.1f}')}, "
                     f"top share {spread(_vals(seeds, 'top_share')).text()}, acc {spread(_vals(seeds, 'acc_last')).text()}")
    return Verdict(combine(parts), "; ".join(notes), _n(levels))


def judge(rule: str, levels: dict[str, list[Seed]], bench: str) -> Verdict:
    """The verdict of a finding by its rule name (config.VERDICT_RULES). Runs with no output in
    any solution format (e.g. a smoke budget's untrained model) measure nothing about formats.
    A level with no finished run yet is left out (named in the text): it is not a level whose
    seeds split, and a comparison needs both its ends."""
    missing = [lv for lv, s in levels.items() if not s]
    if missing:
        v = judge(rule, {lv: s for lv, s in levels.items() if s}, bench)
        return Verdict(v.verdict, f"{v.measured} (no runs yet: {', '.join(missing)})", v.seeds)
    seeds = [s for v in levels.values() for s in v]
    if rule != "transfer" and seeds and not any(s.measures.get("top_format") for s in seeds):
        return Verdict(NOT_MEASURED, f"no generation in a solution format in any of the {len(seeds)} runs "
                       "(all unclassifiable output)", _n(levels))
    if rule == "collapse":
        return collapse(levels)
    if rule == "scale":
        return scale(levels)
    if rule == "mixture":
        return mixture(levels)
    if rule == "kl":
        return kl(levels, bench)
    if rule == "transfer":
        return transfer(levels, bench)
    return algorithms(levels)
