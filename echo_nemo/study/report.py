"""The study report: a verdict table, then one section per finding with its figures.

`build_study_report(STUDY_DIR, OUT)` reads the study folder `echo-nemo study` writes
(plan.json names each finding's levels, seeds, RL runs and evals) and draws, per finding:

- format share over RL steps: a panel per solution format, one colour per factor level,
  the line the mean over seeds and the band their min-max;
- held-out greedy accuracy over RL steps, same grouping;
- pass@1 / pass@k / maj@k over RL steps where the finding evaluates every checkpoint;
- per-format accuracy at the end of RL (bars per level, whiskers over seeds);
- final format shares per level (stacked bars, mean over seeds).

Runs that have not finished (no metrics yet) are left out and counted in the section.
The verdict of each finding comes from echo_nemo.study.verdict (rules in its docstring).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from echo_nemo.errors import UserError
from echo_nemo.metrics import read_metrics
from echo_nemo.report import plots
from echo_nemo.report.html import figure_html, table_html, write_page
from echo_nemo.study.measures import SOLUTION_FORMATS, ks_logged, last_value, run_measures
from echo_nemo.study.verdict import Seed, judge, pass1


def load_plan(study_dir: Path) -> dict[str, Any]:
    path = study_dir / "plan.json"
    if not path.is_file():
        raise UserError(f"{str(study_dir)!r} is not a study folder: no plan.json (written by `echo-nemo study`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{str(path)!r} is not valid JSON: {e}") from None


def _results(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{str(path)!r} is not valid JSON (expected the output of `echo-nemo eval`): {e}") from None


def collect_finding(study_dir: Path, plan: dict[str, Any], fid: str) -> tuple[dict[str, list[Seed]], dict[str, list]]:
    """The finding's levels (recipe order) -> Seeds with measures and evals, and -> RL rows
    (for the figures). Runs without metrics are skipped."""
    f = plan["findings"][fid]
    over_steps = {r["key"] for r in plan["runs"] if "--all-steps" in r["argv"]}
    levels: dict[str, list[Seed]] = {}
    rows_of: dict[str, list] = {}
    for m in f["members"]:
        rows = read_metrics(study_dir / m["rl"])
        levels.setdefault(m["level"], [])
        rows_of.setdefault(m["level"], [])
        if not rows:
            continue
        seed = Seed(m["seed"], run_measures(rows, f["benchmark"], f.get("shares", "sampled")))
        for key in m["evals"].values():
            if key in over_steps:
                seed.over_steps = read_metrics(study_dir / key)
            else:
                seed.after = _results(study_dir / key) or seed.after
        for key in m["before"].values():
            seed.before = _results(study_dir / key) or seed.before
        levels[m["level"]].append(seed)
        rows_of[m["level"]].append(rows)
    return levels, rows_of


def finding_figures(fid: str, f: dict[str, Any], levels: dict[str, list[Seed]], rows_of: dict[str, list],
                    out: Path) -> list[tuple[str, Path]]:
    bench = f["benchmark"]
    greedy = f.get("shares") == "greedy"
    prefix, what = ("eval/", "held-out greedy generations") if greedy else ("", "RL samples")
    figs: list[tuple[str, Path | None]] = [
        (f"{fid}: format share of the {what} over RL steps, by {f['factor']} (mean, band: min-max over seeds)",
         plots.plot_level_bands(rows_of, [(f"{prefix}format/{x}/share", x) for x in SOLUTION_FORMATS],
                                out / f"{fid}_format_share.png", f"{fid} {f['title']}: format share", f"share of {what}")),
        (f"{fid}: held-out greedy accuracy over RL steps, by {f['factor']}",
         plots.plot_level_bands(rows_of, [(f"acc/{bench}/pass@1", f"{bench} pass@1 (greedy)")],
                                out / f"{fid}_accuracy.png", f"{fid}: accuracy", "accuracy")),
    ]
    evals = {lv: [s.over_steps for s in seeds if s.over_steps] for lv, seeds in levels.items()}
    eval_rows = [r for runs in evals.values() for rows in runs for r in rows]
    benches = sorted({k.split("/")[1] for r in eval_rows for k in r if k.startswith("acc/")})
    for b in benches:
        ks, majs = ks_logged(eval_rows, b), ks_logged(eval_rows, b, "maj")
        panels = [(f"acc/{b}/pass@1", "pass@1")]
        panels += [(f"acc/{b}/pass@{ks[-1]}", f"pass@{ks[-1]}")] if ks and ks[-1] > 1 else []
        panels += [(f"acc/{b}/maj@{majs[-1]}", f"maj@{majs[-1]}")] if majs else []
        figs.append((f"{fid}: {b} pass@k over RL steps (every kept checkpoint evaluated)",
                     plots.plot_level_bands(evals, panels, out / f"{fid}_pass_at_k_{b}.png",
                                            f"{fid}: {b} over RL steps", "accuracy")))
    if any(s.before for seeds in levels.values() for s in seeds):
        pairs = {lv: ([v for s in seeds if (v := pass1(s.before, bench)) is not None],
                      [v for s in seeds if (v := pass1(s.after, bench)) is not None]) for lv, seeds in levels.items()}
        figs.append((f"{fid}: {bench} pass@1 of the pretrained model and after RL (whiskers: min-max over seeds)",
                     plots.plot_before_after(pairs, out / f"{fid}_before_after_{bench}.png",
                                             f"{fid}: {bench} before / after RL", "pass@1")))
    acc = {lv: {x: [v for rows in runs if (v := last_value(rows, f"{prefix}format/{x}/acc")) is not None]
                for x in SOLUTION_FORMATS} for lv, runs in rows_of.items()}
    share = {lv: {x: [last_value(rows, f"{prefix}format/{x}/share") or 0.0 for rows in runs] for x in SOLUTION_FORMATS}
             for lv, runs in rows_of.items()}
    figs.append((f"{fid}: accuracy within each format at the last RL step (bars: mean, whiskers: min-max over seeds)",
                 plots.plot_level_bars(acc, out / f"{fid}_format_acc.png", f"{fid}: per-format accuracy", "accuracy")))
    figs.append((f"{fid}: final format shares of the {what} per level (mean over seeds)",
                 plots.plot_level_bars(share, out / f"{fid}_final_share.png", f"{fid}: final shares", "share",
                                       stacked=True)))
    return [(c, p) for c, p in figs if p is not None]


def build_study_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the figures and index.html (verdict table + a section per finding); returns its path."""
    study_dir, out = Path(study_dir), Path(out_dir)
    plan = load_plan(study_dir)
    out.mkdir(parents=True, exist_ok=True)
    verdicts, sections = [], []
    for fid, f in plan["findings"].items():
        levels, rows_of = collect_finding(study_dir, plan, fid)
        if fid not in plan.get("selected", plan["findings"]) and not any(levels.values()):
            continue  # neither asked for this time nor run before (e.g. by an earlier --only)
        v = judge(f["verdict"], levels, f["benchmark"])
        finished = sum(len(s) for s in levels.values())
        verdicts.append({"finding": f"{fid} {f['title']}", "paper's claim": f["claim"],
                         "measured": v.measured, "seeds": v.seeds, "runs": f"{finished}/{len(f['members'])}",
                         "verdict": v.verdict})
        parts = [f"<h2 id='{html.escape(fid)}'>{html.escape(fid)}: {html.escape(f['title'])}</h2>",
                 f"<p><b>Claim:</b> {html.escape(f['claim'])}<br><b>Factor:</b> {html.escape(f['factor'])} in "
                 f"{html.escape(', '.join(f['levels']))}; {finished} of {len(f['members'])} RL runs finished; "
                 f"format shares: {html.escape(f.get('shares', 'sampled'))}<br>"
                 f"<b>Verdict:</b> {html.escape(v.verdict)} ({html.escape(f['verdict'])} rule) — "
                 f"{html.escape(v.measured)}</p>"]
        if f.get("notes"):
            parts.append(f"<p><i>{html.escape(f['notes'])}</i></p>")
        parts += [figure_html(c, p) for c, p in finding_figures(fid, f, levels, rows_of, out)]
        sections.append("".join(parts))
    title = f"echo-nemo study {plan['name']} ({plan['budget']})"
    page = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Study folder: {html.escape(str(study_dir))}; {plan['seeds']} seed(s) per level; shares are of the "
            "RL samples (the run's sampling temperature) unless a finding says greedy (its held-out greedy eval); "
            "accuracy is the held-out greedy pass@1 the RL run logs.</p>",
            "<h2>Verdicts</h2>", f"<div class='verdicts'>{table_html(verdicts)}</div>",
            "<p>Rules: echo_nemo/study/verdict.py (a rule of several parts holds when all measured parts do, "
            "does not hold when none do, else mixed).</p>", *sections]
    (out / "verdicts.json").write_text(json.dumps(verdicts, indent=2))
    return write_page(out, title, page)
