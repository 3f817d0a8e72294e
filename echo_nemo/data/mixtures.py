"""Mixture arithmetic: repeat factors and token shares.

A repeat factor r applied to a source of n documents selects

    floor(r) full copies of all n documents + round((r - floor(r)) * n) documents

drawn without replacement (a seeded subsample), so `4` is the whole source four times
and `0.25` a quarter of it. The token share of source i is tokens_i / sum_j tokens_j,
counted after repeats (what the model actually sees).

Streaming (`interleave`): source i contributes P_i = floor(r_i) * n_i + extra_i documents
("picks"); the mixture's k-th document comes from the source with the smallest

    (picks_i + 1/2) / P_i

(ties to the lower index): the k-th pick of source i sits at the middle of its 1/P_i-wide
slot of the stream, so each source is spread evenly over the whole stream and every
prefix of n picks holds n * P_i / sum_j P_j of source i, give or take about one.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator

import numpy as np


def repeat_counts(n: int, repeat: float) -> tuple[int, int]:
    """(full copies, extra subsampled documents) for `n` documents and factor `repeat`."""
    full = math.floor(repeat)
    return full, round((repeat - full) * n)


def expand_repeats(sizes: list[int], repeats: list[float], seed: int = 0) -> list[tuple[int, int]]:
    """(source, document) picks for every source after its repeat factor."""
    picks: list[tuple[int, int]] = []
    for src, (n, r) in enumerate(zip(sizes, repeats)):
        full, extra = repeat_counts(n, r)
        for _ in range(full):
            picks.extend((src, i) for i in range(n))
        if extra:
            chosen = np.random.default_rng([seed, 2, src]).choice(n, size=extra, replace=False)
            picks.extend((src, int(i)) for i in sorted(chosen))
    return picks


def subsample_mask(n: int, extra: int, seed: int, src: int) -> np.ndarray | None:
    """Which of `n` documents the fractional part of a repeat factor keeps (bool[n]); the
    same draw as `expand_repeats`, held as one byte per document instead of a list."""
    if not extra:
        return None
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([seed, 2, src]).choice(n, size=extra, replace=False)] = True
    return mask


def interleave(totals: list[int], done: list[int]) -> Iterator[int]:
    """Source index of each next pick: smallest (done_i + 1/2) / total_i first (see module doc).
    The caller counts each pick in `done` (lists updated in place, so the order resumes from
    any point) and ends a source early by setting its total to its done count."""
    heap = [((d + 0.5) / t, i) for i, (t, d) in enumerate(zip(totals, done)) if d < t]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        yield i
        if done[i] < totals[i]:
            heapq.heappush(heap, ((done[i] + 0.5) / totals[i], i))


def source_shares(tokens: list[int]) -> list[float]:
    """share_i = tokens_i / sum(tokens)."""
    total = sum(tokens)
    return [t / total if total else 0.0 for t in tokens]


def parse_mixture_name(name: str) -> list[tuple[str, float]]:
    """The sources and repeats a paper-style name spells: 'as_fm3_tg_4xomi1' ->
    [('as', 1), ('fm3', 1), ('tg', 1), ('omi1', 4)]; 'echo_' prefixes echo-lab sources; a
    '-variant' suffix names corpus settings, not sources ('echo_tg_omi1_omi2-fair')."""
    parts = name.partition("-")[0].split("_")
    prefix = ""
    if parts and parts[0] == "echo":
        prefix, parts = "echo_", parts[1:]
    out = []
    for p in parts:
        factor, sep, src = p.partition("x")
        if sep and factor.replace(".", "", 1).isdigit():
            out.append((prefix + src, float(factor)))
        else:
            out.append((prefix + p, 1.0))
    return out
