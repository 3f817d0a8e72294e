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
import numpy as np

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
    _label_step_axes(ax, ylabel, title)
    return _save(fig, path)


def _label_step_axes(ax, ylabel: str, title: str, xlabel: str = "step") -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


# ----------------------------------------------------------------------------- over steps
# A series is drawn as a curve only when it has at least two points; a lone point (e.g. a
# held-out eval only at the last step) is a bar named by its step on a category axis, not
# a dot on a step axis a few steps wide.
def format_share_figure(rows: Sequence[dict[str, Any]], title: str, prefix: str = "") -> plt.Figure | None:
    """`<prefix>format/<name>/share` over steps: a stacked area when logged at >= 2 steps,
    else a stacked bar at the one step; None if not logged."""
    shares = {f: dict(zip(*series(rows, f"{prefix}format/{f}/share"))) for f in FORMATS}
    steps = sorted({s for d in shares.values() for s in d})
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    stacks = [[shares[f].get(s, 0.0) for s in steps] for f in FORMATS]
    if len(steps) > 1:
        ax.stackplot(steps, stacks, labels=list(FORMATS), colors=[FORMAT_COLORS[f] for f in FORMATS], alpha=0.85)
        ax.set_xlim(steps[0], steps[-1])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("RL step")
    else:
        bottom = 0.0
        for f, (v,) in zip(FORMATS, stacks):
            ax.bar([f"step {steps[0]}"], [v], bottom=bottom, width=0.5, label=f, color=FORMAT_COLORS[f], alpha=0.85)
            bottom += v
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of generations")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="format")
    return fig


def plot_format_share(rows: Sequence[dict[str, Any]], path: Path, title: str, prefix: str = "") -> Path | None:
    """format_share_figure as a PNG; None if not logged."""
    fig = format_share_figure(rows, title, prefix)
    return _save(fig, path) if fig is not None else None


def metric_curves_figure(rows: Sequence[dict[str, Any]], keys: Sequence[str], title: str,
                         ylabel: str) -> plt.Figure | None:
    """A line per metric key logged at >= 2 steps; keys logged at one step are bars (in a
    panel of their own beside the lines). None if no key is logged."""
    logged = {key: series(rows, key) for key in keys}
    curves = {k: sv for k, sv in logged.items() if len(sv[0]) > 1}
    points = {k: (sv[0][0], sv[1][0]) for k, sv in logged.items() if len(sv[0]) == 1}
    if not curves and not points:
        return None
    panels = [p for p in (curves, points) if p]
    widths = [3, 1] if len(panels) == 2 else [1]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 + 2 * (len(panels) - 1), 4), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    if curves:
        ax = axes[0][0]
        for key, (steps, values) in curves.items():
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
        _label_step_axes(ax, ylabel, title)
    if points:
        ax = axes[0][-1]
        ax.bar([f"{key}\n(step {step})" for key, (step, _) in points.items()],
               [v for _, v in points.values()], width=0.5, color="#9467bd")
        ax.set_title(title if not curves else "logged once", fontsize=None if not curves else 9)
        ax.set_ylabel(ylabel if not curves else "")
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    return fig


def plot_metric_curves(
    rows: Sequence[dict[str, Any]], keys: Sequence[str], path: Path, title: str, ylabel: str
) -> Path | None:
    """metric_curves_figure as a PNG (e.g. accuracy and reward); None if none logged."""
    fig = metric_curves_figure(rows, keys, title, ylabel)
    return _save(fig, path) if fig is not None else None


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


# ----------------------------------------------------------------------------- study figures
# One colour per factor level (a study's levels, not formats); the band is the seeds' min-max.
LEVEL_COLORS = ["#d62728", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f", "#1f77b4"]
BAND_ALPHA = 0.25


def level_color(index: int) -> str:
    return LEVEL_COLORS[index % len(LEVEL_COLORS)]


def seed_band(runs: Sequence[Sequence[dict[str, Any]]], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, mean, min, max) of `key` across runs (seeds), at every step any run logs it;
    at each step over the runs that log it there."""
    by_step: dict[int, list[float]] = {}
    for rows in runs:
        for s, v in zip(*series(rows, key)):
            by_step.setdefault(s, []).append(v)
    steps = sorted(by_step)
    return (steps, [sum(by_step[s]) / len(by_step[s]) for s in steps],
            [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps])


def plot_level_bands(groups: dict[str, Sequence[Sequence[dict[str, Any]]]], panels: Sequence[tuple[str, str]],
                     path: Path, title: str, ylabel: str, ylim: tuple[float, float] | None = (0, 1)) -> Path | None:
    """One panel per (metric key, panel title); in each, one line per factor level (the mean
    over its seeds) with a band from the seeds' min to max. None if nothing is logged."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, 3.8), squeeze=False)
    drawn = 0
    for ax, (key, panel_title) in zip(axes[0], panels):
        for i, (label, runs) in enumerate(groups.items()):
            steps, mean, lo, hi = seed_band(runs, key)
            if not steps:
                continue
            color = level_color(i)
            ax.plot(steps, mean, color=color, marker="o" if len(steps) < 20 else None, markersize=3,
                    label=f"{label} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(steps, lo, hi, color=color, alpha=BAND_ALPHA, linewidth=0)
            drawn += 1
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("RL step")
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3)
        if ylim:
            ax.set_ylim(*ylim)
    if not drawn:
        plt.close(fig)
        return None
    axes[0][0].set_ylabel(ylabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        if not handles:
            handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", title="level (seeds)", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_level_bars(values: dict[str, dict[str, list[float]]], path: Path, title: str, ylabel: str,
                    stacked: bool = False) -> Path | None:
    """Per factor level, one bar per format: the mean over seeds, whiskers at the seeds' min
    and max (stacked: the mean shares stacked, no whiskers). `values[level][format]` lists
    the seeds' values. None if empty."""
    levels = [lv for lv, d in values.items() if any(d.values())]
    if not levels:
        return None
    fmts = [f for f in FORMATS if any(values[lv].get(f) for lv in levels)]
    fig, ax = plt.subplots(figsize=(1.6 * len(levels) + 4, 4))
    x = np.arange(len(levels))
    width = 0.8 / (1 if stacked else max(1, len(fmts)))
    bottom = np.zeros(len(levels))
    for j, f in enumerate(fmts):
        seeds = [values[lv].get(f, []) for lv in levels]
        mean = np.array([sum(v) / len(v) if v else 0.0 for v in seeds])
        if stacked:
            ax.bar(x, mean, width, bottom=bottom, color=FORMAT_COLORS[f], label=f)
            bottom += mean
            continue
        # clipped at 0: the mean of equal values can land an ulp outside them
        lo = np.maximum(0, [mean[i] - min(v) if v else 0.0 for i, v in enumerate(seeds)])
        hi = np.maximum(0, [max(v) - mean[i] if v else 0.0 for i, v in enumerate(seeds)])
        ax.bar(x - 0.4 + width * (j + 0.5), mean, width, yerr=[lo, hi], capsize=3, color=FORMAT_COLORS[f], label=f)
    ax.set_xticks(x, levels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="format")
    return _save(fig, path)


def plot_before_after(values: dict[str, tuple[list[float], list[float]]], path: Path, title: str,
                      ylabel: str) -> Path | None:
    """Per factor level, a bar before and a bar after RL: the mean over seeds, whiskers at
    their min and max. `values[level] = (before values, after values)`. None if empty."""
    levels = [lv for lv, (b, a) in values.items() if b or a]
    if not levels:
        return None
    fig, ax = plt.subplots(figsize=(1.6 * len(levels) + 3.5, 4))
    x = np.arange(len(levels))
    for j, (name, color) in enumerate((("before RL", "#9b9b9b"), ("after RL", level_color(0)))):
        seeds = [values[lv][j] for lv in levels]
        mean = np.array([sum(v) / len(v) if v else 0.0 for v in seeds])
        lo = np.maximum(0, [mean[i] - min(v) if v else 0.0 for i, v in enumerate(seeds)])
        hi = np.maximum(0, [max(v) - mean[i] if v else 0.0 for i, v in enumerate(seeds)])
        ax.bar(x - 0.2 + 0.4 * j, mean, 0.4, yerr=[lo, hi], capsize=3, color=color, label=name)
    ax.set_xticks(x, levels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
