"""The study report: per finding the paper's claim and each pre-registered expectation's
verdict with its interval, then the finding's figures.

`build_study_report(STUDY_DIR, OUT)` reads the study folder `echo-nemo study` writes
(plan.json: each finding's levels, pretraining and RL seeds, runs and evals; expectations.yaml:
the expectations the study ran with) and, per finding:

1. gathers every finished RL run as a `quantities.RunRecord` (its rows, the results of
   its evals and of the same evals of the pretrained model it started from);
2. per expectation: the quantity of every run, grouped by pretraining seed per level
   (`expectations.group_runs`), the context its preconditions read (`context.context`:
   calibration, accuracy before RL, the design), and the verdict (`expectations.evaluate`:
   holds / does not hold / inconclusive / not testable here, with a bootstrap 95% CI over
   pretraining and RL seeds, study.stats);
3. its wall time from nothing: the sum of the wall times of every run it needs (data,
   pretrainings, calibrations, RL runs, evals; each recorded when the run finished);
4. figures: format share and held-out accuracy over RL steps (a line per level, the band
   min-max over runs), pass@k over steps where an eval reads every checkpoint, pass@1 of
   the pretrained models and after RL per eval measured before, per-format accuracy and
   final shares.

Writes index.html, findings.md (the same verdicts as markdown) and verdicts.json (a row
per expectation). Runs not finished yet are left out and counted.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from echo_nemo.errors import UserError
from echo_nemo.launch.status import DONE_MARKER
from echo_nemo.metrics import read_metrics
from echo_nemo.report import plots
from echo_nemo.report.html import figure_html, table_html, write_page
from echo_nemo.study.config import FINAL
from echo_nemo.study.context import FindingView, context, pass1, prompt_set_size, read_json
from echo_nemo.study.expectations import (
    Evaluated,
    Expectation,
    evaluate,
    group_runs,
    load_expectations,
)
from echo_nemo.study.measures import SOLUTION_FORMATS, ks_logged, last_value, spread
from echo_nemo.study.quantities import RunRecord, quantity, top_format
from echo_nemo.study.quantities import shares as eval_shares


def load_plan(study_dir: Path) -> dict[str, Any]:
    path = study_dir / "plan.json"
    if not path.is_file():
        raise UserError(f"{str(study_dir)!r} is not a study folder: no plan.json (written by `echo-nemo study`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{str(path)!r} is not valid JSON: {e}") from None


def study_expectations(study_dir: Path, plan: dict[str, Any]) -> dict[str, Expectation]:
    """The expectations the study ran with (its copy in the study folder); none if it has none."""
    name = plan.get("expectations")
    return load_expectations(study_dir / name) if name else {}


SHARING_FILE = ".study_sharing"  # how many local runs shared the cores with this one (written by the study)
EPOCH_QUANTITIES = ("collapse_epoch", "gain_window_distance")  # they need the RL prompt set's size


def collect_records(view: FindingView, epochs: bool = False) -> list[RunRecord]:
    """Every finished RL run of the finding (rows logged) with its evals' results; with
    `epochs`, the RL prompt set's size and prompts per step (loading the set)."""
    records = []
    for m in view.members:
        rows = read_metrics(view.study_dir / m["rl"])
        if not rows:
            continue
        rec = RunRecord(m["level"], m.get("pretrain_seed", 0), m["seed"], rows, bench=view.finding["benchmark"])
        if epochs:
            c = view.config(m["rl"])
            rec.prompts_per_step = c.rollout.prompts_per_step
            rec.set_size = prompt_set_size(c.data.train, c.data.train_limit)
        for label, key in m["evals"].items():
            if "--all-steps" in view.runs[key]["argv"]:
                rec.over_steps[label] = read_metrics(view.study_dir / key)
            elif (res := read_json(view.study_dir / key / "results.json")) is not None:
                rec.after[label] = res
        for label, key in m["before"].items():
            if (res := read_json(view.study_dir / key / "results.json")) is not None:
                rec.before[label] = res
        records.append(rec)
    return records


def evaluate_finding(view: FindingView, records: list[RunRecord], expectations: dict[str, Expectation]
                     ) -> list[tuple[Evaluated, dict[str, float | None]]]:
    """Each of the finding's expectations evaluated on its runs, with the context it read."""
    out = []
    for name, e in expectations.items():
        if e.finding != view.fid:
            continue
        bench = view.bench(e)
        values = {lv: group_runs([(r.pretrain_seed, quantity(e.quantity, r, e.eval, bench))
                                  for r in records if r.level == lv])
                  for lv in view.finding["levels"]}
        ctx = context(view, e)
        out.append((evaluate(name, e, values, ctx), ctx))
    return out


def needed_runs(view: FindingView) -> list[str]:
    """Every run the finding needs, from nothing: its RL runs, evals and calibrations and
    what those need (pretrainings, data builds)."""
    need = {k for m in view.members
            for k in (m["rl"], *m["evals"].values(), *m["before"].values(), m.get("calibration") or m["rl"])}
    for r in reversed(view.plan["runs"]):  # stage order: whatever a run needs comes earlier
        if r["key"] in need:
            need.update(r["after"])
    return [r["key"] for r in view.plan["runs"] if r["key"] in need]


def run_wall_s(run_dir: Path) -> float | None:
    """A finished run's share of the wall clock: its wall_s (every sitting) over the number
    of local runs that shared the cores with it (SHARING_FILE, 1 when absent); None when
    the run has not recorded a wall time."""
    marker = run_dir / DONE_MARKER
    wall = json.loads(marker.read_text()).get("wall_s") if marker.is_file() else None
    if not isinstance(wall, int | float):
        return None
    sharing = run_dir / SHARING_FILE
    return wall / max(1, int(sharing.read_text())) if sharing.is_file() else float(wall)


def wall_text(study_dir: Path, keys: list[str]) -> str:
    """The runs' wall time from nothing: the sum of each one's share of the clock
    (`run_wall_s`), saying how many have not recorded one yet."""
    walls = [run_wall_s(study_dir / key) for key in keys]
    timed = [w for w in walls if w is not None]
    missing = len(walls) - len(timed)
    return _clock(sum(timed)) + (f" ({missing} of {len(walls)} runs not timed yet)" if missing else "")


def _clock(seconds: float) -> str:
    m = int(round(seconds / 60))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def verdict_row(fid: str, f: dict[str, Any], ev: Evaluated, seeds: str, wall: str) -> dict[str, str]:
    e, o = ev.expectation, ev.outcome
    iv = o.interval
    return {"finding": f"{fid} {f['title']}", "expectation": ev.name, "paper's claim": e.claim or f["claim"],
            "expected (before the runs)": f"{e.expectation} ({e.compared()} {'>' if e.direction > 0 else '<'} "
                                          f"{e.null_value:g}, effect {e.effect:g})",
            "verdict": o.verdict,
            "estimate [95% CI]": f"{iv.estimate:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}] ({iv.runs} runs)" if iv else "-",
            "why": o.reason, "mean by pretraining seed": ev.by_seed(), "seeds (pretraining x RL)": seeds,
            "finding's wall time": wall}


def level_table(records: list[RunRecord], levels: list[str], bench: str) -> list[dict[str, str]]:
    """Per level, descriptively: runs, the final eval's top formats and pass@1 before / after."""
    rows = []
    for lv in levels:
        recs = [r for r in records if r.level == lv]
        finals = [r.after[FINAL] for r in recs if bench in (r.after.get(FINAL) or {}).get("benchmarks", {})]
        tops = [top_format(eval_shares(res, bench)) for res in finals]
        counts = {fmt: sum(t[0] == fmt and t[1] > 0 for t in tops) for fmt in SOLUTION_FORMATS}  # all `other`: none
        rows.append({"level": lv, "RL runs finished": str(len(recs)),
                     "final top format (runs)": ", ".join(f"{k} x{v}" for k, v in counts.items() if v) or "-",
                     "top share": spread([t[1] for t in tops]).text(),
                     "pass@1 before RL": spread([pass1(r.before.get(FINAL), bench) for r in recs]).text("{:.3f}"),
                     "pass@1 after RL": spread([pass1(res, bench) for res in finals]).text("{:.3f}")})
    return rows


def finding_figures(fid: str, f: dict[str, Any], records: list[RunRecord], out: Path) -> list[tuple[str, Path]]:
    bench = f["benchmark"]
    greedy = f.get("shares") == "greedy"
    prefix, what = ("eval/", "held-out greedy generations") if greedy else ("", "RL samples")
    rows_of = {lv: [r.rows for r in records if r.level == lv] for lv in f["levels"]}
    figs: list[tuple[str, Path | None]] = [
        (f"{fid}: format share of the {what} over RL steps, by {f['factor']} (mean, band: min-max over runs)",
         plots.plot_level_bands(rows_of, [(f"{prefix}format/{x}/share", x) for x in SOLUTION_FORMATS],
                                out / f"{fid}_format_share.png", f"{fid} {f['title']}: format share", f"share of {what}")),
        (f"{fid}: held-out greedy accuracy over RL steps, by {f['factor']}",
         plots.plot_level_bands(rows_of, [(f"acc/{bench}/pass@1", f"{bench} pass@1 (greedy)")],
                                out / f"{fid}_accuracy.png", f"{fid}: accuracy", "accuracy")),
    ]
    evals = {lv: [rows for r in records if r.level == lv for rows in r.over_steps.values() if rows]
             for lv in f["levels"]}
    eval_rows = [row for runs in evals.values() for rows in runs for row in rows]
    for b in sorted({k.split("/")[1] for r in eval_rows for k in r if k.startswith("acc/")}):
        ks, majs = ks_logged(eval_rows, b), ks_logged(eval_rows, b, "maj")
        panels = [(f"acc/{b}/pass@1", "pass@1")]
        panels += [(f"acc/{b}/pass@{ks[-1]}", f"pass@{ks[-1]}")] if ks and ks[-1] > 1 else []
        panels += [(f"acc/{b}/maj@{majs[-1]}", f"maj@{majs[-1]}")] if majs else []
        figs.append((f"{fid}: {b} pass@k over RL steps (every kept checkpoint evaluated)",
                     plots.plot_level_bands(evals, panels, out / f"{fid}_pass_at_k_{b}.png",
                                            f"{fid}: {b} over RL steps", "accuracy")))
    for label in dict.fromkeys(lbl for r in records for lbl in r.before):
        for b in sorted({b for r in records for b in (r.before.get(label) or {}).get("benchmarks", {})}):
            pairs = {lv: ([v for r in records if r.level == lv and (v := pass1(r.before.get(label), b)) is not None],
                          [v for r in records if r.level == lv and (v := pass1(r.after.get(label), b)) is not None])
                     for lv in f["levels"]}
            figs.append((f"{fid}: {b} pass@1 (eval {label}) of the pretrained models and after RL "
                         "(whiskers: min-max over runs)",
                         plots.plot_before_after(pairs, out / f"{fid}_before_after_{label}_{b}.png",
                                                 f"{fid}: {b} before / after RL", "pass@1")))
    acc = {lv: {x: [v for rows in runs if (v := last_value(rows, f"{prefix}format/{x}/acc")) is not None]
                for x in SOLUTION_FORMATS} for lv, runs in rows_of.items()}
    share = {lv: {x: [last_value(rows, f"{prefix}format/{x}/share") or 0.0 for rows in runs] for x in SOLUTION_FORMATS}
             for lv, runs in rows_of.items()}
    figs.append((f"{fid}: accuracy within each format at the last RL step (bars: mean, whiskers: min-max over runs)",
                 plots.plot_level_bars(acc, out / f"{fid}_format_acc.png", f"{fid}: per-format accuracy", "accuracy")))
    figs.append((f"{fid}: final format shares of the {what} per level (mean over runs)",
                 plots.plot_level_bars(share, out / f"{fid}_final_share.png", f"{fid}: final shares", "share",
                                       stacked=True)))
    return [(c, p) for c, p in figs if p is not None]


def _section_html(fid: str, f: dict[str, Any], rows: list[dict[str, str]], contexts: list[dict], finished: int,
                  levels: list[dict[str, str]], figures: list[tuple[str, Path]], seeds: str, wall: str) -> str:
    parts = [f"<h2 id='{html.escape(fid)}'>{html.escape(fid)}: {html.escape(f['title'])}</h2>",
             f"<p><b>The paper's claim:</b> {html.escape(f['claim'])}<br><b>Factor:</b> {html.escape(f['factor'])} in "
             f"{html.escape(', '.join(f['levels']))}; seeds {seeds} (pretraining x RL); {finished} of "
             f"{len(f['members'])} RL runs finished; wall time from nothing: {html.escape(wall)}; "
             f"format shares in the figures: {html.escape(f.get('shares', 'sampled'))}</p>"]
    if f.get("notes"):
        parts.append(f"<p><i>{html.escape(f['notes'])}</i></p>")
    for row, ctx in zip(rows, contexts):
        measured = "; ".join(f"{k} = {'not measured' if v is None else f'{v:.3g}'}" for k, v in ctx.items())
        parts.append(f"<p><b>{html.escape(row['expectation'])}</b>: {html.escape(row['expected (before the runs)'])}"
                     f"<br><b>Verdict:</b> {html.escape(row['verdict'])} — {html.escape(row['estimate [95% CI]'])}; "
                     f"{html.escape(row['why'])}" + (f"<br>Context: {html.escape(measured)}" if measured else "")
                     + "</p>")
    parts.append(table_html(levels))
    parts += [figure_html(c, p) for c, p in figures]
    return "".join(parts)


def findings_markdown(plan: dict[str, Any], sections: list[tuple[str, dict[str, Any], list[dict[str, str]], str]],
                      study_wall: str) -> str:
    """findings.md: the study's wall time, then per finding the claim, then per expectation
    what was expected, the verdict, the estimate with its interval, why, the seeds and the
    finding's wall time."""
    lines = [f"# Findings of study {plan['name']} ({plan['budget']})", "",
             f"Wall time from nothing, every run of the study: {study_wall}", ""]
    if plan.get("tuning"):
        lines += [f"RL hyperparameters: {plan['tuning']}", ""]
    for fid, f, rows, wall in sections:
        lines += [f"## {fid}: {f['title']}", "", f"The paper's claim: {f['claim']}", "",
                  f"Wall time from nothing: {wall}", ""]
        if not rows:
            lines += ["No expectation names this finding.", ""]
            continue
        lines += ["| expectation | expected (before the runs) | verdict | estimate [95% CI] | why "
                  "| mean by pretraining seed | seeds |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            cells = [r["expectation"], r["expected (before the runs)"], r["verdict"], r["estimate [95% CI]"], r["why"],
                     r["mean by pretraining seed"], r["seeds (pretraining x RL)"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def build_study_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the figures, index.html, findings.md and verdicts.json; returns index.html's path."""
    study_dir, out = Path(study_dir), Path(out_dir)
    plan = load_plan(study_dir)
    expectations = study_expectations(study_dir, plan)
    out.mkdir(parents=True, exist_ok=True)
    verdicts, html_sections, md_sections = [], [], []
    for fid, f in plan["findings"].items():
        view = FindingView(study_dir, plan, fid)
        records = collect_records(view, any(e.finding == fid and e.quantity in EPOCH_QUANTITIES
                                            for e in expectations.values()))
        if fid not in plan.get("selected", plan["findings"]) and not records:
            continue  # neither asked for this time nor run before (e.g. by an earlier --only)
        wall = wall_text(study_dir, needed_runs(view))
        seeds = f"{len(plan.get('pretrain_seeds', [0]))} x {plan['seeds']}"
        evaluated = evaluate_finding(view, records, expectations)
        rows = [verdict_row(fid, f, ev, seeds, wall) for ev, _ in evaluated]
        verdicts += rows
        html_sections.append(_section_html(fid, f, rows, [c for _, c in evaluated], len(records),
                                           level_table(records, f["levels"], view.eval_bench(FINAL)),
                                           finding_figures(fid, f, records, out), seeds, wall))
        md_sections.append((fid, f, rows, wall))
    title = f"echo-nemo study {plan['name']} ({plan['budget']})"
    summary = [{k: r[k] for k in ("finding", "expectation", "verdict", "estimate [95% CI]", "why")} for r in verdicts]
    page = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Study folder: {html.escape(str(study_dir))}; {len(plan.get('pretrain_seeds', [0]))} pretraining "
            f"seed(s) x {plan['seeds']} RL seed(s) per level. "
            + (f"RL hyperparameters: {html.escape(plan['tuning'])}. " if plan.get("tuning") else "")
            + "Every verdict follows a pre-registered expectation (expectations.yaml in the study folder): "
            "holds when the 95% interval (hierarchical bootstrap over pretraining and RL seeds) excludes the null "
            "on the expected side, does not hold when it excludes the expected effect, inconclusive otherwise, "
            "not testable here when a precondition fails (echo_nemo/study/stats.py).</p>",
            "<h2>Verdicts</h2>", f"<div class='verdicts'>{table_html(summary)}</div>", *html_sections]
    (out / "verdicts.json").write_text(json.dumps(verdicts, indent=2))
    study_wall = wall_text(study_dir, [r["key"] for r in plan["runs"]])
    (out / "findings.md").write_text(findings_markdown(plan, md_sections, study_wall))
    return write_page(out, title, page)
