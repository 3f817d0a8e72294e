"""Matplotlib (Agg) plots of run metrics: one function per figure, each writes a PNG.

Inputs are plain rows as `echo_nemo.metrics.read_metrics` returns them (dicts with
`step` and flat `a/b` keys) and eval results (the `results.json` of `echo-nemo eval`),
so the plots can be drawn from any run directory without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from echo_nemo.reward.formats import FORMATS  # noqa: E402

FORMAT_COLORS = {"tinygsm": "#1f77b4", "llm_code": "#ff7f0e", "text": "#2ca02c", "other": "#9b9b9b"}


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over the rows that carry it (numbers only)."""
    steps, values = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            steps.append(int(r["step"]))
            values.append(float(v))
    return steps, values


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finish_step_axes(fig, ax, ylabel: str, title: str, path: Path) -> Path:
    """Integer step axis, labels, grid and legend, then save."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_format_share(rows: Sequence[dict[str, Any]], path: Path, title: str, prefix: str = "") -> Path | None:
    """Stacked area of `<prefix>format/<name>/share` over steps; None if not logged."""
    shares = {f: dict(zip(*series(rows, f"{prefix}format/{f}/share"))) for f in FORMATS}
    steps = sorted({s for d in shares.values() for s in d})
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    stacks = [[shares[f].get(s, 0.0) for s in steps] for f in FORMATS]
    if len(steps) > 1:
        ax.stackplot(steps, stacks, labels=list(FORMATS), colors=[FORMAT_COLORS[f] for f in FORMATS], alpha=0.85)
        ax.set_xlim(steps[0], steps[-1])
    else:  # one point (e.g. a held-out eval only at the end): an area of zero width is invisible
        bottom = 0.0
        for f, (v,) in zip(FORMATS, stacks):
            ax.bar(steps, [v], bottom=bottom, width=0.6, label=f, color=FORMAT_COLORS[f], alpha=0.85)
            bottom += v
        ax.set_xlim(steps[0] - 1, steps[0] + 1)
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("RL step")
    ax.set_ylabel("share of generations")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="format")
    return _save(fig, path)


def plot_metric_curves(
    rows: Sequence[dict[str, Any]], keys: Sequence[str], path: Path, title: str, ylabel: str
) -> Path | None:
    """Line per metric key over steps (e.g. accuracy and reward); None if none logged."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for key in keys:
        steps, values = series(rows, key)
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    return _finish_step_axes(fig, ax, ylabel, title, path)


def plot_pass_at_k(evals: Sequence[tuple[str, dict[str, Any]]], benchmark: str, path: Path) -> Path | None:
    """pass@k vs k (log2 x axis), one line per eval (e.g. before / after RL)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    all_ks: set[int] = set()
    for label, results in evals:
        bench = results.get("benchmarks", {}).get(benchmark)
        if not bench or not bench.get("pass_at_k"):
            continue
        ks = sorted(int(k) for k in bench["pass_at_k"])
        all_ks.update(ks)
        ax.plot(ks, [bench["pass_at_k"][str(k)] for k in ks], marker="o", label=label)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])  # 1, 2, 4, ... not 2^0, 2^1
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_title(f"{benchmark}: pass@k before / after")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_eval_formats(evals: Sequence[tuple[str, dict[str, Any]]], benchmark: str, path: Path) -> Path | None:
    """Stacked bars of the format shares of each eval (e.g. before / after RL)."""
    bars = [(label, r["benchmarks"][benchmark]) for label, r in evals if benchmark in r.get("benchmarks", {})]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    bottoms = [0.0] * len(bars)
    for f in FORMATS:
        heights = [b.get("formats", {}).get(f, {}).get("share", 0.0) for _, b in bars]
        ax.bar([lbl for lbl, _ in bars], heights, bottom=bottoms, color=FORMAT_COLORS[f], label=f)
        bottoms = [x + h for x, h in zip(bottoms, heights)]
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of generations")
    ax.set_title(f"{benchmark}: formats of sampled generations")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="format")
    return _save(fig, path)


def plot_sweep(
    runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], key: str, path: Path, title: str, ylabel: str
) -> Path | None:
    """One line per run of the same metric: compares the runs of a sweep."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for label, rows in runs:
        steps, values = series(rows, key)
        if steps:
            ax.plot(steps, values, label=label)
            drawn += 1
    if drawn < 1:
        plt.close(fig)
        return None
    return _finish_step_axes(fig, ax, ylabel, title, path)
