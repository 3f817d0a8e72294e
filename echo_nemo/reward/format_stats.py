"""Per-format statistics: the share and accuracy of each solution format, one meaning
everywhere (RL step logs, RL's held-out eval, `echo-nemo eval`, reports)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from echo_nemo.reward.formats import FORMATS


def format_stats(formats: Sequence[str], rewards: Sequence[float | bool]) -> dict[str, dict[str, float | int | None]]:
    """Share and accuracy of every format over a set of generations.

        share(f) = #{i : format_i = f} / N
        acc(f)   = sum_{i : format_i = f} reward_i / #{i : format_i = f}   (None if no such i)

    With 0/1 rewards (or correct flags) acc is the share of right answers in that format.
    Every name in FORMATS is present; an unknown format name counts as `other`. A format
    with no samples has no accuracy (None), never a made-up 0.
    """
    if len(formats) != len(rewards):
        raise ValueError(f"formats ({len(formats)}) and rewards ({len(rewards)}) differ in length")
    total = len(formats)
    counts: Counter = Counter()
    hits: Counter = Counter()
    for fmt, r in zip(formats, rewards):
        name = fmt if fmt in FORMATS else "other"
        counts[name] += 1
        hits[name] += float(r)
    stats: dict[str, dict[str, float | int | None]] = {}
    for name in FORMATS:
        n = counts[name]
        stats[name] = {
            "count": n,
            "share": n / total if total else 0.0,
            "acc": hits[name] / n if n else None,
        }
    return stats


def format_metrics(prefix: str, formats: Sequence[str], rewards: Sequence[float | bool]) -> dict[str, float]:
    """format_stats flattened to metric names `<prefix>format/<name>/share|acc`.

    An accuracy of a format that never occurs is left out (not 0, not NaN).
    """
    out: dict[str, float] = {}
    for name, s in format_stats(formats, rewards).items():
        out[f"{prefix}format/{name}/share"] = float(s["share"])
        if s["acc"] is not None:
            out[f"{prefix}format/{name}/acc"] = float(s["acc"])
    return out


def dominant_format(shares: dict[str, float]) -> tuple[str, float]:
    """The format with the largest share (ties: the earlier name in FORMATS)."""
    best = max(FORMATS, key=lambda f: (shares.get(f, 0.0), -FORMATS.index(f)))
    return best, shares.get(best, 0.0)
