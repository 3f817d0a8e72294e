"""The study report on a real study folder: plan.json from the planner, RL metrics.jsonl of
levels x pretraining seeds x RL seeds in the RL loop's format, final evals, evals over
steps, calibrations and data manifests; each pre-registered expectation's verdict with its
interval and the context it read; a failed precondition reads "not testable here"; seed
bands in the figures (pixel check); findings.md; wall time from nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_helpers import (
    mark_done,
    write_eval_over_steps,
    write_eval_results,
    write_rl_run,
    write_study,
)

from echo_nemo.report.plots import BAND_ALPHA, level_color
from echo_nemo.study.context import FindingView, context
from echo_nemo.study.expectations import Precondition
from echo_nemo.study.plan import load_study, plan_study, write_plan
from echo_nemo.study.report import build_study_report, study_expectations
from echo_nemo.study.stats import OUTCOMES

# (winner, speed) of each finding's levels: the speed sets how fast and how far the winner
# takes over (a slower one keeps more minority share)
DESIGN = {
    ("f1", "grpo"): ("llm_code", 0.5),
    ("f3", "1x"): ("llm_code", 0.5), ("f3", "4x"): ("text", 0.2),
    ("f5", "easy"): ("llm_code", 0.5),
    ("f4", "0"): ("llm_code", 0.5), ("f4", "0.1"): ("llm_code", 0.3), ("f4", "1.0"): ("llm_code", 0.1),
    ("f6", "grpo"): ("llm_code", 0.5), ("f6", "ppo"): ("llm_code", 0.5),
}
# the final eval's greedy shares after RL, per level: text gains at 4x, loses at 1x
AFTER = {"1x": {"tinygsm": 0.1, "llm_code": 0.7, "text": 0.2}, "4x": {"tinygsm": 0.1, "llm_code": 0.2, "text": 0.7}}
WALL_S = 60.0


def _manifest(run_dir: Path, code: int, text: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    sources = [{"name": "echo_tg", "tokens": code // 2}, {"name": "echo_omi1", "tokens": code - code // 2},
               {"name": "echo_omi2", "tokens": text}]
    (run_dir / "manifest.json").write_text(json.dumps({"vocab_size": 1024, "seq_length": 128, "sources": sources}))


def make_study(tmp_path: Path, seeds: int, base_acc: float = 0.05) -> Path:
    """Every run of the mini study written as finished; the base pretraining's final-eval
    accuracy is `base_acc` (below f6's 10% floor by default)."""
    plan = plan_study(load_study(write_study(tmp_path), seeds=seeds), tmp_path / "runs")
    write_plan(plan)
    _manifest(plan.study_dir / "data/echo_tg_omi1_omi2", 1000, 500)
    _manifest(plan.study_dir / "data/echo_tg_omi1_4xomi2", 1000, 2000)
    for r in plan.by_stage("pretrain"):
        mark_done(r.run_dir, WALL_S)
    for r in plan.by_stage("calibrate"):
        (r.run_dir).mkdir(parents=True)
        gap = 0.02 + 0.01 * int(r.key[-1]) + 0.1 * ("text4x" in r.key)  # base: 0.02, 0.03; text4x: 0.12, 0.13
        (r.run_dir / "calibration.json").write_text(json.dumps({"context": {"calibration/gap_top2": gap}}))
    for r in plan.by_stage("data") + plan.by_stage("calibrate"):
        mark_done(r.run_dir, WALL_S)
    written = set()
    for fid, members in plan.members.items():
        for m in members:
            if m.rl not in written:  # f6's grpo runs are f1's
                winner, speed = DESIGN[(fid, m.level)]
                write_rl_run(plan.study_dir / m.rl, winner, speed, m.seed)
                mark_done(plan.study_dir / m.rl, WALL_S)
                written.add(m.rl)
            for label, key in m.evals.items():
                if label == "steps":  # pass@8 falls late more at KL 0 than at KL 1
                    write_eval_over_steps(plan.study_dir / key, drop={"0": 0.2, "0.1": 0.1, "1.0": 0.0}[m.level])
                elif label == "final":
                    shares = AFTER.get(m.level, {"tinygsm": 0.02, "llm_code": 0.95, "text": 0.03})
                    write_eval_results(plan.study_dir / key, 0.6, shares=shares)
                else:  # the hard set after RL: every seed above the pretrained model's 0.3
                    write_eval_results(plan.study_dir / key, 0.35 + 0.05 * m.seed)
                mark_done(plan.study_dir / key, WALL_S)
            for label, key in m.before.items():
                write_eval_results(plan.study_dir / key, base_acc if label == "final" else 0.3)
                mark_done(plan.study_dir / key, WALL_S)
    return plan.study_dir


def test_study_report_evaluates_every_expectation_with_its_context(tmp_path):
    study = make_study(tmp_path, seeds=2)
    index = build_study_report(study, study / "report")
    page = index.read_text()
    rows = json.loads((study / "report" / "verdicts.json").read_text())
    got = {r["expectation"]: r for r in rows}
    assert list(got) == ["f1_collapse", "f1_epoch", "f3_text", "f4_passk", "f5_transfer", "f6_acc"]
    assert {k: r["verdict"] for k, r in got.items()} == {
        "f1_collapse": "holds",  # every final eval 0.95 llm_code, the null 0.5
        "f1_epoch": "not testable here",  # 3 steps of 4 prompts: far from one epoch of the RL set
        "f3_text": "holds",  # text -0.1 at 1x, +0.4 at 4x: +0.5, beyond the effect 0.1
        "f4_passk": "holds",  # pass@8 drops 0.2 late at KL 0, nothing at KL 1
        "f5_transfer": "holds",  # 0.3 before, 0.35-0.40 after on the hard set
        "f6_acc": "not testable here",  # the pretrained model is 5% accurate: below the 10% floor
    }
    assert "RL runs at least one epoch: design/rl_epochs = 0.00161, needs >= 1" in got["f1_epoch"]["why"]
    assert "every level at least 10% before RL: acc_before/min = 0.05, needs >= 0.1" in got["f6_acc"]["why"]
    assert got["f3_text"]["estimate [95% CI]"] == "+0.500 [+0.500, +0.500] (8 runs)"
    assert got["f5_transfer"]["estimate [95% CI]"].startswith("+0.075 [") and "(4 runs)" in got["f5_transfer"][
        "estimate [95% CI]"]
    assert all(r["seeds (pretraining x RL)"] == "2 x 2" for r in rows)
    # per pretraining seed: RL seeds 0 and 1 gain 0.05 and 0.10 on the hard set from either pretraining
    assert got["f5_transfer"]["mean by pretraining seed"] == "easy: +0.075 / +0.075"
    assert got["f3_text"]["mean by pretraining seed"] == "1x: -0.100 / -0.100; 4x: +0.400 / +0.400"
    # f1 needs 1 data build, 2 pretrainings, 2 calibrations, 4 RL runs, 4 + 2 final evals: 15 runs of 60 s
    assert got["f1_collapse"]["finding's wall time"] == "15 min"
    assert all(r["verdict"] in OUTCOMES for r in rows)

    # the context is computed from the runs: the mean calibration over pretraining seeds,
    # the code tokens of each level's data build
    plan = json.loads((study / "plan.json").read_text())
    f3 = FindingView(study, plan, "f3")
    ctx = context(f3, study_expectations(study, plan)["f3_text"])
    assert ctx == {"calibration/gap_top2": pytest.approx(0.025), "design/code_tokens_ratio_min": 1.0}
    # `@level` reads another level's pretraining than the first
    e = study_expectations(study, plan)["f3_text"]
    e.preconditions = [Precondition("calibration/gap_top2@4x", "<=", 0.05)]
    assert context(f3, e) == {"calibration/gap_top2@4x": pytest.approx(0.125)}

    table = page[page.index("<h2>Verdicts</h2>"): page.index("</table>")]
    assert table.count("<tr>") == 7 and table.count("<td>holds</td>") == 4
    assert table.count("<td>not testable here</td>") == 2 and page.index("</table>") < page.index("<h2 id='f1'>")
    assert "RL hyperparameters tuned on pretraining seed 100" in page
    assert "Context: calibration/gap_top2 = 0.025; design/code_tokens_ratio_min = 1" in page
    assert "seeds 2 x 2 (pretraining x RL); 4 of 4 RL runs finished; wall time from nothing: 15 min" in page
    assert "<td>grpo</td><td>4</td><td>llm_code x4</td>" in page  # f1: the final eval's top format, every run
    for fid in ("f1", "f3", "f4", "f5", "f6"):
        assert f"<h2 id='{fid}'>" in page
        assert f'alt="{fid}_format_share.png"' in page and f'alt="{fid}_final_share.png"' in page
        assert f'alt="{fid}_before_after_final_echolab.png"' in page  # every finding: the final eval before / after
    assert 'alt="f5_before_after_hard_echolab.png"' in page
    assert 'alt="f4_pass_at_k_echolab.png"' in page and 'alt="f1_pass_at_k_echolab.png"' not in page
    assert "kl.coef in 0, 0.1, 1.0" in page  # grouped by the factor: its levels in recipe order
    md = (study / "report" / "findings.md").read_text()
    assert md.count("| f") == 6 and "## f6: algorithms" in md and "The paper's claim: GRPO like PPO" in md
    assert "| f6_acc | PPO ends more accurate than GRPO (acc_final(ppo) - acc_final(grpo) > 0, effect 0.05) | " \
           "not testable here | - |" in md
    assert "| easy: +0.075 / +0.075 | 2 x 2 |" in md

    png = study / "report" / "f4_format_share.png"
    bands = [_share_of_pixels(png, level_color(i), BAND_ALPHA) for i in range(3)]
    assert all(b > 0.002 for b in bands), bands  # each level's band over runs is drawn


def test_a_precondition_met_lets_the_verdict_through(tmp_path):
    """The same study with the pretrained models 40% accurate: f6's floor holds, and its
    verdict follows the interval (both algorithms end at 0.6: the interval excludes the
    effect 0.05)."""
    study = make_study(tmp_path, seeds=2, base_acc=0.4)
    build_study_report(study, study / "report")
    got = {r["expectation"]: r for r in json.loads((study / "report" / "verdicts.json").read_text())}
    assert got["f6_acc"]["verdict"] == "does not hold" and got["f6_acc"]["estimate [95% CI]"].startswith("+0.000")


def _share_of_pixels(png: Path, hex_color: str, alpha: float) -> float:
    """Fraction of the image's pixels painted in `hex_color` blended over white at `alpha`."""
    import matplotlib.image as mpimg
    import numpy as np
    from matplotlib.colors import to_rgb

    want = alpha * np.array(to_rgb(hex_color)) + (1 - alpha)
    img = mpimg.imread(png)[..., :3]
    return float((np.abs(img - want).max(axis=-1) < 0.02).mean())


def test_study_report_with_unfinished_runs_and_bad_folder(tmp_path, cli):
    plan = plan_study(load_study(write_study(tmp_path), only=["f1"], seeds=2), tmp_path / "runs")
    write_plan(plan)
    write_rl_run(plan.study_dir / plan.members["f1"][0].rl, "llm_code", 0.5, 0)  # the other 3 not run yet
    index = build_study_report(plan.study_dir, plan.study_dir / "report")
    v = json.loads((plan.study_dir / "report" / "verdicts.json").read_text())[0]
    assert v["verdict"] == "not testable here" and "level grpo: 0 run(s) measured top_share_final" in v["why"]
    assert v["finding's wall time"] == "0 min (15 of 15 runs not timed yet)"
    assert "1 of 4 RL runs finished" in index.read_text()

    res = cli("study", str(tmp_path), "--report-only")  # a folder that is not a study's
    assert res.returncode == 2 and "plan.json" in res.stderr and "Traceback" not in res.stderr
    res = cli("report", str(plan.study_dir))
    assert res.returncode == 2 and "--report-only" in res.stderr and "Traceback" not in res.stderr
    (plan.study_dir / "report" / "index.html").unlink()
    res = cli("study", str(plan.study_dir), "--report-only")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 of 4 RL runs finished" in (plan.study_dir / "report" / "index.html").read_text()


def test_runs_are_grouped_by_pretraining_seed_for_the_interval(tmp_path):
    """The report's interval resamples pretraining seeds, then RL seeds within each: the
    same as stats.mean_interval on the values grouped by pretraining seed, and wider than
    the flat bootstrap when the pretrained models differ."""
    from echo_nemo.study.expectations import Expectation
    from echo_nemo.study.quantities import RunRecord
    from echo_nemo.study.report import evaluate_finding
    from echo_nemo.study.stats import mean_interval

    plan = plan_study(load_study(write_study(tmp_path), only=["f1"]), tmp_path / "runs")
    saved = json.loads(write_plan(plan).read_text())
    acc = {(0, 0): 0.30, (0, 1): 0.32, (0, 2): 0.31, (1, 0): 0.70, (1, 1): 0.72, (1, 2): 0.69}
    records = [RunRecord("grpo", p, s, after={"final": {"benchmarks": {"echolab": {"pass@1": v}}}})
               for (p, s), v in acc.items()]
    e = Expectation(finding="f1", expectation="accuracy above 0.2", quantity="acc_final", null_value=0.2)
    ((ev, ctx),) = evaluate_finding(FindingView(plan.study_dir, saved, "f1"), records, {"f1_acc": e})
    groups = [[0.30, 0.32, 0.31], [0.70, 0.72, 0.69]]
    assert ctx == {} and ev.outcome.interval == mean_interval(groups)
    # two pretrained models: a wider interval (compared at 50%: at 95% the widened tails of
    # both reach the two seeds' means)
    grouped, flat = mean_interval(groups, level=0.5), mean_interval([list(acc.values())], level=0.5)
    assert (grouped.hi - grouped.lo) > 1.3 * (flat.hi - flat.lo)


def test_a_level_whose_final_eval_is_all_unclassified_has_no_top_format():
    from echo_nemo.study.quantities import RunRecord
    from echo_nemo.study.report import level_table

    def results(shares):
        stats = {f: {"share": shares.get(f, 0.0)} for f in ("tinygsm", "llm_code", "text", "other")}
        return {"benchmarks": {"echolab": {"pass@1": 0.0, "greedy_formats": stats, "formats": stats}}}

    records = [RunRecord("a", 0, 0, after={"final": results({"other": 1.0})}),
               RunRecord("b", 0, 0, after={"final": results({"text": 0.6, "other": 0.4})})]
    rows = level_table(records, ["a", "b"], "echolab")
    assert [r["final top format (runs)"] for r in rows] == ["-", "text x1"]


def test_wall_time_counts_each_run_by_its_share_of_the_cores(tmp_path):
    """Runs that went two at a time count half their wall time each (the study writes how
    many shared the cores); findings.md opens with the whole study's wall time."""
    from echo_nemo.study.report import SHARING_FILE

    study = make_study(tmp_path, seeds=2)
    plan = json.loads((study / "plan.json").read_text())
    f1_rl = [m["rl"] for m in plan["findings"]["f1"]["members"]]
    assert len(f1_rl) == 4
    for key in f1_rl:
        (study / key / SHARING_FILE).write_text("2\n")
    build_study_report(study, study / "report")
    got = {r["expectation"]: r for r in json.loads((study / "report" / "verdicts.json").read_text())}
    assert got["f1_collapse"]["finding's wall time"] == "13 min"  # 15 runs of 60 s, 4 of them at half
    md = (study / "report" / "findings.md").read_text()
    total = len(plan["runs"]) - 2  # every run 60 s, f1's four RL runs 30 s
    assert total == 94 and "Wall time from nothing, every run of the study: 1 h 34 min\n" in md
