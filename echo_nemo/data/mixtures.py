"""Mixture arithmetic: repeat factors and token shares.

A repeat factor r applied to a source of n documents selects

    floor(r) full copies of all n documents + round((r - floor(r)) * n) documents

drawn without replacement (a seeded subsample), so `4` is the whole source four times
and `0.25` a quarter of it. The token share of source i is tokens_i / sum_j tokens_j,
counted after repeats (what the model actually sees).
"""

from __future__ import annotations

import math

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


def source_shares(tokens: list[int]) -> list[float]:
    """share_i = tokens_i / sum(tokens)."""
    total = sum(tokens)
    return [t / total if total else 0.0 for t in tokens]


def parse_mixture_name(name: str) -> list[tuple[str, float]]:
    """The sources and repeats a paper-style name spells: 'as_fm3_tg_4xomi1' ->
    [('as', 1), ('fm3', 1), ('tg', 1), ('omi1', 4)]; 'echo_' prefixes echo-lab sources."""
    parts = name.split("_")
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
