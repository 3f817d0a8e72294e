"""The run report: collect run directories, draw the plots, write one HTML file.

`build_report([run_dir, ...], out_dir)` accepts training/RL runs (metrics.jsonl),
eval runs (results.json from `echo-nemo eval`) and sweep folders (a folder whose
subfolders are runs). The HTML is self-contained: the PNGs are embedded as data URIs
(and also written beside it), the resolved configs are inlined, nothing is fetched.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from echo_nemo.errors import UserError
from echo_nemo.metrics import read_metrics
from echo_nemo.report import plots
from echo_nemo.reward.format_stats import dominant_format
from echo_nemo.reward.formats import FORMATS

# Config keys that differ between runs for reasons that say nothing about the
# experiment (paths, names); they never label a sweep comparison.
_IGNORED_KEY_PARTS = ("dir", "path", "out", "name", "checkpoint", "tokenizer")


@dataclass
class Run:
    path: Path
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    config_text: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] | None = None  # results.json of an eval run

    @property
    def is_eval(self) -> bool:
        return self.results is not None

    @property
    def label(self) -> str:
        return str((self.results or {}).get("label") or self.name)


def _is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "results.json").is_file()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def load_run(path: str | os.PathLike) -> Run:
    """Read one run directory (metrics, config, eval results)."""
    p = Path(path)
    run = Run(path=p, name=p.name, rows=read_metrics(p))
    cfg = p / "config.yaml"
    if cfg.is_file():
        run.config_text = cfg.read_text()
        try:
            run.config = _flatten(yaml.safe_load(run.config_text) or {})
        except yaml.YAMLError as e:
            raise UserError(f"{str(cfg)!r} is not valid YAML: {e}") from None
    res = p / "results.json"
    if res.is_file():
        try:
            run.results = json.loads(res.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{str(res)!r} is not valid JSON (expected the output of `echo-nemo eval`): {e}") from None
    return run


def collect_runs(paths: list[str | os.PathLike]) -> list[Run]:
    """Runs named directly, plus the runs inside any sweep folder named (sorted)."""
    runs: list[Run] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise UserError(f"run directory not found: {str(p)!r} (expected a folder with metrics.jsonl or results.json)")
        if _is_run(p):
            runs.append(load_run(p))
            continue
        children = sorted(c for c in p.iterdir() if c.is_dir() and _is_run(c))
        if not children:
            raise UserError(
                f"{str(p)!r} is neither a run directory (no metrics.jsonl or results.json) "
                "nor a sweep folder holding run directories"
            )
        runs.extend(load_run(c) for c in children)
    return runs


def sweep_labels(runs: list[Run]) -> list[str]:
    """Label each run by the config values that differ between the runs (e.g. rl.kl_coef=0.01)."""
    keys = sorted({k for r in runs for k in r.config})
    varying = [
        k
        for k in keys
        if not any(part in k.split(".")[-1] for part in _IGNORED_KEY_PARTS)
        and len({json.dumps(r.config.get(k), sort_keys=True, default=str) for r in runs}) > 1
    ]
    if not varying:
        return [r.name for r in runs]
    return [", ".join(f"{k}={r.config.get(k)}" for k in varying[:3]) for r in runs]


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    _, values = plots.series(rows, key)
    return values[-1] if values else None


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def summary_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (run, benchmark) for eval runs, one per training run (last values)."""
    table: list[dict[str, Any]] = []
    for run in runs:
        if run.is_eval:
            for bench, b in run.results.get("benchmarks", {}).items():
                shares = {f: b.get("formats", {}).get(f, {}).get("share", 0.0) for f in FORMATS}
                fmt, share = dominant_format(shares)
                pk = b.get("pass_at_k", {})
                kmax = max((int(k) for k in pk), default=None)
                table.append({
                    "run": run.label, "benchmark": bench, "problems": b.get("problems"),
                    "pass@1 (greedy)": b.get("pass@1"),
                    f"pass@{kmax}" if kmax else "pass@k": pk.get(str(kmax)) if kmax else None,
                    f"maj@{b['k']}" if b.get("k") else "maj@k": b.get("maj_at_k"),
                    "sampled acc": b.get("sample_acc"),
                    "dominant format": f"{fmt} {share:.0%}",
                })
        else:
            shares = {f: _last(run.rows, f"format/{f}/share") or 0.0 for f in FORMATS}
            fmt, share = dominant_format(shares)
            table.append({
                "run": run.name, "benchmark": "(training)",
                "steps": run.rows[-1]["step"] if run.rows else None,
                "reward/mean (last)": _last(run.rows, "reward/mean"),
                "loss (last)": _last(run.rows, "loss"),
                "dominant format": f"{fmt} {share:.0%}" if any(shares.values()) else None,
            })
    return table


def table_html(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def draw_plots(runs: list[Run], out_dir: Path) -> list[tuple[str, Path]]:
    """All figures for these runs as (caption, png path)."""
    figures: list[tuple[str, Path | None]] = []
    train_runs = [r for r in runs if not r.is_eval and r.rows]
    eval_runs = [r for r in runs if r.is_eval]
    for run in train_runs:
        figures.append((f"{run.name}: format share over RL steps", plots.plot_format_share(
            run.rows, out_dir / f"{run.name}_format_share.png", f"{run.name}: format share of generations")))
        figures.append((f"{run.name}: format share of greedy held-out generations", plots.plot_format_share(
            run.rows, out_dir / f"{run.name}_eval_format_share.png",
            f"{run.name}: format share (greedy, held-out prompts)", prefix="eval/")))
        acc_keys = sorted({k for r in run.rows for k in r if k.startswith("acc/")})
        figures.append((f"{run.name}: accuracy and reward", plots.plot_metric_curves(
            run.rows, ["reward/mean", *acc_keys], out_dir / f"{run.name}_accuracy_reward.png",
            f"{run.name}: accuracy and reward over steps", "accuracy / mean reward")))
        if any("loss" in r for r in run.rows) and not any("reward/mean" in r for r in run.rows):
            figures.append((f"{run.name}: loss", plots.plot_metric_curves(
                run.rows, ["loss"], out_dir / f"{run.name}_loss.png", f"{run.name}: training loss", "loss")))
    if eval_runs:
        labelled = [(r.label, r.results) for r in eval_runs]
        benches = sorted({b for r in eval_runs for b in r.results.get("benchmarks", {})})
        for bench in benches:
            figures.append((f"{bench}: pass@k vs k", plots.plot_pass_at_k(labelled, bench, out_dir / f"pass_at_k_{bench}.png")))
            figures.append((f"{bench}: formats", plots.plot_eval_formats(labelled, bench, out_dir / f"formats_{bench}.png")))
    if len(train_runs) > 1:  # a sweep: compare the runs on the same axes
        labels = sweep_labels(train_runs)
        pairs = list(zip(labels, [r.rows for r in train_runs]))
        figures.append(("sweep: mean reward", plots.plot_sweep(
            pairs, "reward/mean", out_dir / "sweep_reward.png", "Sweep: mean reward over steps", "mean reward")))
        for f in FORMATS[:3]:
            figures.append((f"sweep: {f} share", plots.plot_sweep(
                pairs, f"format/{f}/share", out_dir / f"sweep_share_{f}.png",
                f"Sweep: share of the {f} format", "share of generations")))
    return [(cap, p) for cap, p in figures if p is not None]


def figure_html(caption: str, png: Path) -> str:
    """A PNG embedded as a data URI (self-contained) with its caption and a link to the file."""
    data = base64.b64encode(png.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(png.name)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{html.escape(caption)} (<a href="{html.escape(png.name)}">{html.escape(png.name)}</a>)'
            "</figcaption></figure>")


def write_page(out: Path, title: str, parts: list[str]) -> Path:
    """out/index.html from HTML parts (written atomically); returns its path."""
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}"
             "pre{background:#f6f6f6;padding:8px;font-size:12px}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    index = out / "index.html"
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text(page)
    os.replace(tmp, index)
    return index


def build_report(paths: list[str | os.PathLike], out_dir: str | os.PathLike, title: str = "echo-nemo report") -> Path:
    """Write the PNGs and a self-contained index.html into out_dir; returns the HTML path."""
    runs = collect_runs(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_plots(runs, out)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        "<p>Runs: " + ", ".join(html.escape(str(r.path)) for r in runs) + "</p>",
        "<h2>Summary</h2>", table_html(summary_rows(runs)),
        "<h2>Plots</h2>",
    ]
    parts += [figure_html(caption, png) for caption, png in figures]
    parts.append("<h2>Resolved configs</h2>")
    for run in runs:
        if run.config_text:
            parts.append(f"<details><summary>{html.escape(run.name)}/config.yaml</summary>"
                         f"<pre>{html.escape(run.config_text)}</pre></details>")
    index = write_page(out, title, parts)
    (out / "summary.json").write_text(json.dumps(summary_rows(runs), indent=2, default=str))
    return index
