"""Planning a study: shared data and pretraining, factor level x seed, shared RL runs, evals;
dry-run prints every run; a finished run is skipped when the study runs again."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from study_helpers import REPO, STUDY, write_study

from echo_nemo.errors import UserError
from echo_nemo.launch.submit import DONE_MARKER, changed_since_done, is_done
from echo_nemo.study.plan import load_study, plan_study, refuse_changed, write_plan
from echo_nemo.study.report import SHARING_FILE
from echo_nemo.study.run import (
    Progress,
    _clock,
    eta_seconds,
    launch_order,
    run_stage,
    runs_side_by_side,
)


def test_plan_shares_pretraining_and_expands_levels_by_pretraining_and_rl_seed(tmp_path):
    plan = plan_study(load_study(write_study(tmp_path)), tmp_path / "out")
    keys = {s: [r.key for r in plan.by_stage(s)] for s in ("data", "pretrain", "calibrate", "rl", "eval")}
    assert keys["data"] == ["data/echo_tg_omi1_omi2", "data/echo_tg_omi1_4xomi2"]  # shared by the seeds
    # each pretraining once per pretraining seed (base for f1, f3, f4, f5, f6), each calibrated
    assert keys["pretrain"] == [f"pretrain/{p}/seed-{s}" for p in ("base", "text4x") for s in (0, 1)]
    assert keys["calibrate"] == [f"calibrate/{p}/seed-{s}" for p in ("base", "text4x") for s in (0, 1)]
    # (f1 1 + f3 2 + f4 3 + f5 1 + f6 ppo 1 levels) x 2 pretraining seeds x 3 RL seeds (f6's grpo runs are f1's)
    assert len(keys["rl"]) == 8 * 2 * 3
    # evals: the final eval of every RL run (48) and of every pretrained model (4); f4's over
    # steps (18); f5's hard set after RL (6) and of its pretrained models (2)
    assert len(keys["eval"]) == 48 + 4 + 18 + 6 + 2
    assert [(m.level, m.pretrain_seed, m.seed) for m in plan.members["f4"]] == [
        (lv, p, s) for lv in ("0", "0.1", "1.0") for p in (0, 1) for s in range(3)]
    m = plan.members["f5"][4]  # pretraining seed 1, RL seed 1
    assert (m.rl, m.pretrain, m.calibration) == ("rl/f5/easy/pretrain-1/seed-1", "pretrain/base/seed-1",
                                                 "calibrate/base/seed-1")
    assert m.before == {"final": "eval/pretrain/base/seed-1/final", "hard": "eval/pretrain/base/seed-1/hard"}
    assert m.evals == {"final": "eval/f5/easy/pretrain-1/seed-1/final", "hard": "eval/f5/easy/pretrain-1/seed-1/hard"}
    assert [m.rl for m in plan.members["f6"] if m.level == "grpo"] == [
        f"rl/f1/grpo/pretrain-{p}/seed-{s}" for p in (0, 1) for s in range(3)]
    runs = {r.key: r for r in plan.runs}
    base1 = str(plan.study_dir / "pretrain" / "base" / "seed-1")
    rl = runs["rl/f4/0.1/pretrain-1/seed-2"]
    assert rl.after == ["pretrain/base/seed-1"]
    assert rl.argv == ["rl", str(REPO / "recipes/rl/quickstart_smoke.yaml"), "eval_every=1", "kl.coef=0.1",
                       f"model.init={base1}", "seed=2", f"run_dir={plan.study_dir / 'rl/f4/0.1/pretrain-1/seed-2'}"]
    pre = runs["pretrain/text4x/seed-1"]
    assert "train.seed=1" in pre.argv and pre.after == ["data/echo_tg_omi1_4xomi2"]
    assert f"data.shards={plan.study_dir / 'data' / 'echo_tg_omi1_4xomi2'}" in pre.argv
    cal = runs["calibrate/text4x/seed-0"]
    assert cal.after == ["pretrain/text4x/seed-0"] and cal.argv == [
        "calibrate", str(plan.study_dir / "pretrain/text4x/seed-0"), "limit=4", "--out", str(cal.run_dir)]
    final = runs["eval/f3/4x/pretrain-0/seed-2/final"]
    assert final.after == ["rl/f3/4x/pretrain-0/seed-2"] and "limit=10" in final.argv and "--all-steps" not in final.argv
    assert final.argv[-2:] == ["--label", "final"]
    before = runs["eval/pretrain/text4x/seed-0/final"]
    assert before.after == ["pretrain/text4x/seed-0"] and before.argv[1] == final.argv[1]  # the same eval
    ev = runs["eval/f4/1.0/pretrain-0/seed-0/steps"]
    assert ev.after == ["rl/f4/1.0/pretrain-0/seed-0"] and "--all-steps" in ev.argv
    # an eval over steps takes its last step and step 0 from the run's and the pretraining's
    # final evals, and launches after every other eval
    finals = ["eval/f4/1.0/pretrain-0/seed-0/final", "eval/pretrain/base/seed-0/final"]
    assert ev.reuses == finals
    assert "reuse=" + json.dumps([str(runs[k].run_dir) for k in finals]) in ev.argv
    assert not final.reuses and not any(a.startswith("reuse=") for a in final.argv)
    order = launch_order(plan.by_stage("eval"))
    assert {r.key for r in order[-18:]} == {r.key for r in plan.by_stage("eval") if r.reuses}
    assert plan.study_dir == (tmp_path / "out" / "mini" / "full").resolve()
    saved = json.loads(write_plan(plan).read_text())
    assert saved["pretrain_seeds"] == [0, 1] and saved["final_eval"] == "final"
    assert saved["tuning"].startswith("RL hyperparameters tuned") and saved["expectations"] == "expectations.yaml"
    assert (plan.study_dir / "expectations.yaml").read_text().startswith("\nexpectations:")


def test_a_budget_sets_its_seeds_and_calibration_and_the_command_line_wins(tmp_path):
    recipe = write_study(tmp_path)
    plan = plan_study(load_study(recipe, only=["f1"], budget="smoke"), tmp_path / "o")
    assert plan.cfg.pretrain_seeds == [0] and plan.cfg.seeds == 3
    assert [r.key for r in plan.by_stage("rl")] == [f"rl/f1/grpo/pretrain-0/seed-{s}" for s in range(3)]
    (cal,) = plan.by_stage("calibrate")
    assert cal.argv[2:4] == ["limit=4", "max_new_tokens=8"]  # the study's, then the budget's
    text = STUDY.replace("pretrain_seeds: [0], calibration", "pretrain_seeds: [3, 4], seeds: 2, calibration")
    plan = plan_study(load_study(write_study(tmp_path, text), only=["f1"], budget="smoke"), tmp_path / "o")
    assert [r.key for r in plan.by_stage("rl")] == [f"rl/f1/grpo/pretrain-{p}/seed-{s}" for p in (3, 4) for s in (0, 1)]
    plan = plan_study(load_study(write_study(tmp_path, text), only=["f1"], budget="smoke", seeds=1), tmp_path / "o")
    assert len(plan.by_stage("rl")) == 2  # --seeds over the budget's
    for bad, needle in (("pretrain_seeds: [0, 1]", "pretrain_seeds: [0, 0]"), ("pretrain_seeds: [0, 1]", "pretrain_seeds: []")):
        with pytest.raises(UserError, match="pretrain_seeds must list distinct seeds"):
            load_study(write_study(tmp_path, STUDY.replace(bad, needle)))


def test_no_final_eval_plans_no_final_evals(tmp_path):
    text = STUDY[: STUDY.index("final_eval:")] + STUDY[STUDY.index("pretrain:\n"):]
    plan = plan_study(load_study(write_study(tmp_path, text, expectations="expectations: {}"), only=["f1"]),
                      tmp_path / "o")
    assert plan.by_stage("eval") == [] and all(m.evals == {} and m.before == {} for m in plan.members["f1"])


def test_a_data_override_gets_its_own_build(tmp_path):
    """A pretraining with data_overrides builds its own data, named by them: never the
    plain build another finding made (which would count as done)."""
    plain = f"text4x: {{data: {REPO}/recipes/data/echo_tg_omi1_4xomi2.yaml,"
    study = write_study(tmp_path, STUDY.replace(plain, plain.replace("4xomi2.yaml,", "omi2.yaml, data_overrides: "
                                                                       "[echolab.max_steps=5],")))
    plan = plan_study(load_study(study), tmp_path / "out")
    assert [r.key for r in plan.by_stage("data")] == ["data/echo_tg_omi1_omi2", "data/echo_tg_omi1_omi2__echolab.max_steps-5"]
    data = {r.key: r for r in plan.runs}["data/echo_tg_omi1_omi2__echolab.max_steps-5"]
    assert "echolab.max_steps=5" in data.argv
    assert {r.key: r for r in plan.runs}["pretrain/text4x/seed-1"].after == [data.key]


def test_only_seeds_and_budget_narrow_the_plan(tmp_path):
    recipe = write_study(tmp_path)
    plan = plan_study(load_study(recipe, only=["f4"], seeds=2, budget="smoke"), tmp_path)
    assert [r.key for r in plan.by_stage("pretrain")] == ["pretrain/base/seed-0"]  # the budget's one seed
    assert [r.key for r in plan.by_stage("rl")] == [f"rl/f4/{lv}/pretrain-0/seed-{s}" for lv in ("0", "0.1")
                                                   for s in (0, 1)]
    assert all("steps=2" in r.argv for r in plan.by_stage("rl"))  # the budget's overrides come last
    assert plan.study_dir.name == "smoke"
    with pytest.raises(UserError, match="f9"):
        load_study(recipe, only=["f9"])
    with pytest.raises(UserError, match="budget 'huge'"):
        load_study(recipe, budget="huge")


@pytest.mark.parametrize("old, new, needle", [
    ("seeds: 3", "seedz: 3", "seedz"),  # unknown key
    ("levels: {grpo: {}}", "levels: {grpo: {pretrain: nowhere}}", "pretraining 'nowhere'"),
    ("rl: [eval_every=1]\n    levels: {grpo", "rl: [eval_every=1, rolout.temperature=0.5]\n    levels: {grpo",
     "rolout.temperature"),  # a typo in an RL override: caught by the rl schema before anything runs
])
def test_bad_study_recipes_exit_2_naming_the_problem(tmp_path, cli, old, new, needle):
    from study_helpers import STUDY

    assert old in STUDY
    text = STUDY.replace(old, new, 1)
    recipe = write_study(tmp_path, text)
    res = cli("study", str(recipe), "--dry-run", "--out", str(tmp_path / "o"))
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_dry_run_prints_every_run_and_writes_nothing(tmp_path, cli):
    recipe = write_study(tmp_path)
    res = cli("study", str(recipe), "--dry-run", "--only", "f1,f6", "--seeds", "2", "--budget", "smoke",
              "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "f6 algorithms: algorithm in ['grpo', 'ppo'] x 1 x 2 seed(s) = 4 RL run(s), 2 shared" in out
    for key in ("data/echo_tg_omi1_omi2", "pretrain/base/seed-0", "calibrate/base/seed-0", "rl/f1/grpo/pretrain-0/seed-0",
                "rl/f1/grpo/pretrain-0/seed-1", "rl/f6/ppo/pretrain-0/seed-0", "rl/f6/ppo/pretrain-0/seed-1",
                "eval/pretrain/base/seed-0/final", "eval/f6/ppo/pretrain-0/seed-1/final"):
        assert f"todo {key}\n" in out
    assert "[calibrate] 1 run(s), 0 done" in out and "[rl] 4 run(s), 0 done" in out and "rl/f6/grpo" not in out
    assert "[eval] 5 run(s), 0 done" in out  # the final eval of 4 RL runs and of the pretrained model
    assert "  tuning: RL hyperparameters tuned on pretraining seed 100\n" in out
    assert "echo-nemo rl recipes/rl/quickstart_smoke.yaml eval_every=1 algorithm=ppo steps=2 model.init=" in out
    assert not (tmp_path / "o").exists()


def test_a_finished_run_is_skipped_when_the_study_runs_again(tmp_path):
    plan = plan_study(load_study(write_study(tmp_path), only=["f3"], seeds=1, budget="smoke"), tmp_path / "o")
    write_plan(plan)
    built, done_before = plan.by_stage("data")
    done_before.run_dir.mkdir(parents=True)
    (done_before.run_dir / DONE_MARKER).write_text("{}\n")  # finished earlier (its shards: not needed here)
    lines: list[str] = []
    progress = Progress(plan, done={r.key for r in plan.runs if is_done(r.run_dir)}, echo=lines.append)
    run_stage(plan, "data", "debug", progress)
    assert progress.done == {built.key, done_before.key} and not progress.failed
    assert (built.run_dir / "manifest.json").is_file() and is_done(built.run_dir)
    assert sorted(p.name for p in done_before.run_dir.iterdir()) == [DONE_MARKER]  # not rebuilt
    assert any(line.startswith("[study] 2/") and "ETA" in line for line in lines)
    stamp = (built.run_dir / DONE_MARKER).stat().st_mtime_ns
    again: list[str] = []
    progress = Progress(plan, done={r.key for r in plan.runs if is_done(r.run_dir)}, echo=again.append)
    run_stage(plan, "data", "debug", progress)
    assert again == [] and (built.run_dir / DONE_MARKER).stat().st_mtime_ns == stamp
    assert json.loads((plan.study_dir / "plan.json").read_text())["findings"]["f3"]["levels"] == ["1x", "4x"]


def test_a_finished_run_whose_command_changed_is_refused(tmp_path, cli):
    """A run is done once; if the recipe later gives it another command line, the study
    stops (exit 2) naming the run and what changed, unless --reuse-done. A study folder
    moved elsewhere, or a run renamed within it, still matches."""
    recipe = write_study(tmp_path)
    plan = plan_study(load_study(recipe, only=["f3"], seeds=1, budget="smoke"), tmp_path / "o")
    built = plan.by_stage("data")[0]
    progress = Progress(plan, done=set(), echo=lambda line: None)
    run_stage(plan, "data", "debug", progress)  # a real PointJob writes the marker
    assert built.key in progress.done
    assert (built.run_dir / SHARING_FILE).read_text() == "1\n"  # it ran alone: its whole wall time counts
    refuse_changed(plan, {built.key})  # unchanged: accepted

    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "o"), moved)
    plan = plan_study(load_study(recipe, only=["f3"], seeds=1, budget="smoke"), moved)
    moved_run = {r.key: r for r in plan.runs}[built.key]
    assert is_done(moved_run.run_dir) and changed_since_done(moved_run.run_dir, moved_run.argv, plan.study_dir) is None
    assert changed_since_done(moved_run.run_dir, moved_run.argv + ["echolab.max_steps=5"], plan.study_dir) == (
        [], ["echolab.max_steps=5"])

    # the recipe now pretrains longer than the finished run did
    pre = {r.key: r for r in plan.runs}["pretrain/base/seed-0"]
    pre.run_dir.mkdir(parents=True)
    old_argv = [a for a in pre.argv if not a.startswith("train.steps=")] + ["train.steps=1"]
    (pre.run_dir / DONE_MARKER).write_text(json.dumps({"argv": old_argv, "run_dir": str(pre.run_dir)}))
    res = cli("study", str(recipe), "--only", "f3", "--seeds", "1", "--budget", "smoke", "--dry-run", "--out", str(moved))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "pretrain/base/seed-0: ran with train.steps=1" in res.stderr and "--reuse-done" in res.stderr
    assert "data/" not in res.stderr  # the matching run is not named
    res = cli("study", str(recipe), "--only", "f3", "--seeds", "1", "--budget", "smoke", "--dry-run",
              "--reuse-done", "--out", str(moved))
    assert res.returncode == 0, res.stderr
    assert "done pretrain/base/seed-0" in res.stdout


def test_eta_scales_the_estimate_by_the_pace_so_far():
    assert eta_seconds(10, 0, 0) == 600  # nothing done yet: the recipe's estimate
    assert eta_seconds(10, 4, 480) == 1200  # runs took twice their estimate
    assert eta_seconds(0, 4, 100) == 0


def test_runs_side_by_side_count_their_share_of_the_wall_time(tmp_path):
    plan = plan_study(load_study(write_study(tmp_path), only=["f1"]), tmp_path / "o")
    rl = plan.by_stage("rl")  # f1: 3 seeds
    lines: list[str] = []
    progress = Progress(plan, echo=lines.append)
    for r in rl[:2]:  # a wave of two that took 10 min of wall time together
        progress.finished(r, "done", 600.0, sharing=2)
    assert progress.done_actual_s == 600.0 and f"done {rl[1].key} (10m00s)" in lines[-2]
    est = progress.estimate(rl[0])
    left = sum(progress.estimate(r) for r in plan.runs if r.key not in progress.done)
    assert progress.line().endswith(f"ETA {_clock(left * 60 * 600 / (2 * est * 60))}")


def test_a_costlier_level_counts_longer_and_starts_first(tmp_path):
    """A level's `cost` (e.g. Expert Iteration's longer runs) scales its runs' estimate, and
    its runs start before the stage's cheaper ones, in plan order among equals."""
    text = STUDY.replace("ppo: {rl: [algorithm=ppo]}", "ppo: {rl: [algorithm=ppo], cost: 2.5}")
    assert text != STUDY
    plan = plan_study(load_study(write_study(tmp_path, text), only=["f6"]), tmp_path / "o")
    rl = plan.by_stage("rl")
    grpo = [f"rl/f1/grpo/pretrain-{p}/seed-{s}" for p in (0, 1) for s in range(3)]
    ppo = [f"rl/f6/ppo/pretrain-{p}/seed-{s}" for p in (0, 1) for s in range(3)]
    assert [r.key for r in rl][:3] == grpo[:3]  # plan order
    assert [r.key for r in launch_order(rl)] == ppo + grpo
    progress = Progress(plan, echo=lambda line: None)
    minutes = plan.cfg.budgets[plan.budget].minutes.rl
    assert [progress.estimate(r) for r in launch_order(rl)] == [2.5 * minutes] * 6 + [minutes] * 6
    with pytest.raises(UserError, match="level ppo: cost must be > 0"):
        load_study(write_study(tmp_path, text.replace("cost: 2.5", "cost: 0")))


def test_a_failed_run_skips_what_needs_it_and_the_report_is_still_written(tmp_path):
    from echo_nemo.study.run import run_study

    plan = plan_study(load_study(write_study(tmp_path), only=["f1"], seeds=2, budget="smoke"), tmp_path / "o")
    write_plan(plan)
    (data,) = plan.by_stage("data")
    data.run_dir.mkdir(parents=True)
    (data.run_dir / DONE_MARKER).write_text("{}\n")  # marked done, but holds no shards: pretraining fails
    lines: list[str] = []
    progress = run_study(plan, "debug", echo=lines.append)
    rl = ["rl/f1/grpo/pretrain-0/seed-0", "rl/f1/grpo/pretrain-0/seed-1"]
    evals = ["eval/pretrain/base/seed-0/final"] + [f"eval/{k[3:]}/final" for k in rl]
    assert set(progress.failed) == {"pretrain/base/seed-0", "calibrate/base/seed-0", *rl, *evals}
    assert progress.failed[rl[0]] == "skipped: needs pretrain/base/seed-0"
    assert progress.failed[evals[1]] == f"skipped: needs {rl[0]}"
    assert progress.failed["pretrain/base/seed-0"].startswith("failed: ")
    assert not is_done(plan.study_dir / "pretrain" / "base" / "seed-0")
    assert any("FAILED pretrain/base/seed-0" in line for line in lines)
    verdicts = json.loads((plan.study_dir / "report" / "verdicts.json").read_text())
    assert [v["expectation"] for v in verdicts] == ["f1_collapse", "f1_epoch"]
    assert all(v["verdict"] == "not testable here" and "level grpo: 0 run(s)" in v["why"] for v in verdicts)


def test_run_names_do_not_depend_on_only(tmp_path):
    """`--only f6` plans f6's GRPO runs under the names the whole study gives them (f1's), so
    findings run one at a time share runs and resume each other's work."""
    recipe = write_study(tmp_path)
    alone = plan_study(load_study(recipe, only=["f6"]), tmp_path)
    whole = plan_study(load_study(recipe), tmp_path)
    assert list(alone.members) == ["f6"]
    assert sorted(r.key for r in alone.by_stage("rl")) == sorted(
        [f"rl/{f}/pretrain-{p}/seed-{s}" for f in ("f1/grpo", "f6/ppo") for p in (0, 1) for s in range(3)])
    assert [r.key for r in alone.runs] == [r.key for r in whole.runs if r.key in {x.key for x in alone.runs}]
    assert [r.key for r in alone.by_stage("pretrain")] == ["pretrain/base/seed-0", "pretrain/base/seed-1"]  # no text4x
    saved = json.loads(write_plan(alone).read_text())
    assert saved["selected"] == ["f6"] and list(saved["findings"]) == ["f1", "f3", "f4", "f5", "f6"]


def test_local_runs_side_by_side_share_the_cores(monkeypatch):
    from echo_nemo.study.run import _threads_per_run

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with _threads_per_run(2):
        assert os.environ["OMP_NUM_THREADS"] == "4"
    with _threads_per_run(16):  # never below one thread
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "3"  # restored
    monkeypatch.delenv("OMP_NUM_THREADS")
    with _threads_per_run(0):  # one at a time (or SLURM): torch's own default
        assert "OMP_NUM_THREADS" not in os.environ


def test_the_cores_are_divided_again_as_the_runs_side_by_side_change(tmp_path, monkeypatch):
    """The local pool writes each run's share of the cores; a run's loop follows its file."""
    import torch

    from echo_nemo.cpu.threads import ThreadShare
    from echo_nemo.study.run import _share_cores, _share_file

    text = STUDY.replace("ppo: {rl: [algorithm=ppo]}", "ppo: {rl: [algorithm=ppo], cost: 2.5}")
    plan = plan_study(load_study(write_study(tmp_path, text), only=["f6"]), tmp_path / "o")
    by_key = {r.key: r for r in plan.by_stage("rl")}
    ppo, grpo = by_key["rl/f6/ppo/pretrain-0/seed-0"], by_key["rl/f1/grpo/pretrain-0/seed-0"]
    share = {r.key: _share_file(plan, r) for r in (ppo, grpo)}
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    _share_cores(plan, [grpo, ppo])
    assert [share[k].read_text() for k in (ppo.key, grpo.key)] == ["1", "1"]
    _share_cores(plan, [ppo])  # grpo finished: ppo gets the machine
    assert share[ppo.key].read_text() == "2"
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    _share_cores(plan, [grpo, ppo])  # the remainder goes to the longer run
    assert [share[k].read_text() for k in (ppo.key, grpo.key)] == ["3", "2"]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        follower = ThreadShare(share[grpo.key], every_s=0)
        assert follower.follow() == 2 and torch.get_num_threads() == 2
        assert follower.follow() is None  # unchanged
        share[grpo.key].write_text("1")
        assert follower.follow() == 1 and torch.get_num_threads() == 1
        share[grpo.key].write_text("")  # caught mid-write: ignored until the next read
        assert follower.follow() is None and torch.get_num_threads() == 1
        assert ThreadShare(None).follow() is None  # no share file: torch is left alone
    finally:
        torch.set_num_threads(before)


def test_a_runs_thread_count_depends_on_the_pool_not_on_timing_unless_cores_are_shared():
    # a pool of two: every run on half the cores, even the last one or one resumed alone
    assert [runs_side_by_side(2, running, queued, False) for running, queued in ((0, 5), (1, 0), (0, 0))] == [2, 2, 2]
    assert runs_side_by_side(1, 0, 3, False) == 0 and runs_side_by_side(1, 0, 3, True) == 0  # alone: its own setting
    # share_cores: a run starting alone at a stage's end gets every core
    assert [runs_side_by_side(2, running, queued, True) for running, queued in ((0, 5), (1, 0), (0, 0))] == [2, 2, 1]


@pytest.mark.parametrize("old, new, needle", [
    ("finding: f1\n    claim: one", "finding: f9\n    claim: one", "finding 'f9' is not in the study"),
    ("contrast: [1x, 4x]", "contrast: [1x, 16x]", "contrast names ['16x'], not levels of f3"),
    ("quantity: top_share_final", "quantity: top_share_finale", "quantity 'top_share_finale' is not one the report"),
    ("eval: hard", "eval: harder", "reads eval 'harder', which finding f5 does not have"),
    ("eval: steps", "eval: final", "passk_late_drop reads an eval over steps; eval 'final' is not one"),
    ("design/checkpoints", "design/checkpoint", "precondition on 'design/checkpoint', which the study does not"),
    ("calibration/gap_top2, op", "calibration/gap_top2@8x, op", "names level '8x', not a level of f3 (1x, 4x)"),
])
def test_expectations_that_do_not_fit_the_study_exit_2_before_anything_runs(tmp_path, cli, old, new, needle):
    from study_helpers import EXPECTATIONS

    assert old in EXPECTATIONS
    recipe = write_study(tmp_path, expectations=EXPECTATIONS.replace(old, new, 1))
    res = cli("study", str(recipe), "--dry-run", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()
    missing = STUDY.replace("expectations: EXPECTATIONS", "expectations: nowhere.yaml")
    with pytest.raises(UserError, match="expectations file 'nowhere.yaml' not found"):
        load_study(write_study(tmp_path, missing))
