"""The committed study recipes plan to the designs and grids they claim (dry-run level: every
run's recipe and overrides validated against the command's schema)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from study_helpers import REPO

from echo_nemo.study.plan import load_study, plan_study


def _levels(plan, fid):
    return list(dict.fromkeys(m.level for m in plan.members[fid]))


def _pretrain_of(plan, fid, level):
    runs = {r.key: r for r in plan.runs}
    return {runs[m.rl].after[0] for m in plan.members[fid] if m.level == level}


def test_paper_150m_plans_the_study_grid(tmp_path):
    plan = plan_study(load_study(REPO / "recipes/study/paper_150m.yaml"), tmp_path)
    assert _levels(plan, "f4") == ["0", "0.001", "0.01"]
    assert _levels(plan, "f6") == ["ppo", "grpo", "reinforce", "ei"]
    assert _levels(plan, "f3") == ["tg", "tg_omi1", "tg_2xomi1", "tg_4xomi1", "tg_8xomi1"]
    pre = [r for r in plan.by_stage("pretrain")]
    assert len(pre) == 6 and all("recipes/pretrain/150m.yaml" in r.argv[1] for r in pre)  # each mixture once
    assert len(plan.by_stage("rl")) == 3 + 15 + 6 + 0 + 9  # f4 KL 0.001 and f5 reuse f1's PPO runs
    assert all(m.rl.startswith("rl/f1/") for m in plan.members["f6"] if m.level == "ppo")
    over_steps = [r for r in plan.by_stage("eval") if "--all-steps" in r.argv]
    assert len(over_steps) == 9 and all("benchmarks=[gsm8k]" in r.argv for r in over_steps)
    assert plan.cfg.stages["rl"].profile == "gpu_1gpu" and plan.cfg.seeds == 3


def test_paper_1b_plans_the_scale_finding_over_four_sizes(tmp_path):
    plan = plan_study(load_study(REPO / "recipes/study/paper_1b.yaml"), tmp_path)
    assert _levels(plan, "f2") == ["150m", "300m", "500m", "1b"]
    runs = {r.key: r for r in plan.runs}
    scales = [runs[next(iter(_pretrain_of(plan, "f2", lv)))].argv[1].rsplit("/", 1)[-1] for lv in _levels(plan, "f2")]
    assert scales == ["150m.yaml", "300m.yaml", "500m.yaml", "1b.yaml"]
    assert _levels(plan, "f4") == ["0", "0.001", "0.01"] and _levels(plan, "f6") == ["ppo", "grpo", "ei"]
    # one data build per mixture, shared by the four scales' pretrainings
    assert Counter(r.key for r in plan.by_stage("data"))["data/as_fm3_tg_omi1_omi2"] == 1
    assert len(plan.by_stage("data")) == 4 and len(plan.by_stage("pretrain")) == 7


def test_echolab_designs(tmp_path):
    """The fair design: 2 pretraining x 3 RL seeds; the levels each finding claims; one
    pretraining per size and mixture; the shared GRPO level; f1's 400-prompt set; PPO's
    critic warm-up; f4's eval over >= 6 checkpoints on 200 problems."""
    plan = plan_study(load_study(REPO / "recipes/study/echolab.yaml"), tmp_path)
    assert plan.cfg.pretrain_seeds == [0, 1] and plan.cfg.seeds == 3 and "seed 100" in plan.cfg.tuning
    runs = {r.key: r for r in plan.runs}
    assert _levels(plan, "f2") == ["mini", "tiny", "small"] and _levels(plan, "f3") == ["1x", "2x", "4x"]
    assert _levels(plan, "f4") == ["0", "0.001", "0.01", "0.1"] and _levels(plan, "f6") == ["grpo", "ppo", "reinforce", "ei"]
    scales = [runs[k].argv for lv in ("mini", "small") for k in _pretrain_of(plan, "f2", lv)]
    assert "model.scale=mini" in scales[0] and "model.scale=small" in scales[2]
    data = [runs[next(iter(_pretrain_of(plan, "f3", lv)))].after[0] for lv in ("1x", "2x", "4x")]
    assert data == ["data/echo_tg_omi1_omi2-fair", "data/echo_tg_omi1_2xomi2-fair", "data/echo_tg_omi1_4xomi2-fair"]
    # each pretraining once per pretraining seed: base, mini, small, text2x, text4x
    assert len(plan.by_stage("pretrain")) == 5 * 2 and len(plan.by_stage("calibrate")) == 5 * 2
    assert all("limit=300" in r.argv for r in plan.by_stage("calibrate"))
    # the shared GRPO level: f2's tiny, f3's 1x, f4's KL 0 and f6's GRPO are the same runs
    shared = (("f2", "tiny"), ("f3", "1x"), ("f4", "0"), ("f6", "grpo"))
    assert len({tuple(m.rl for m in plan.members[f] if m.level == lv) for f, lv in shared}) == 1
    # f1 1 + f2 3 + f3 2 + f4 3 + f5 1 + f6 3 levels (one shared) x 2 x 3 seeds
    assert len(plan.by_stage("rl")) == 13 * 6
    f1 = runs[plan.members["f1"][0].rl].argv
    assert "data.train_limit=400" in f1 and "steps=50" in f1 and "eval_every=5" in f1
    ppo = runs[next(m.rl for m in plan.members["f6"] if m.level == "ppo")].argv
    assert "algorithm=ppo" in ppo and "ppo.critic_warmup_steps=5" in ppo
    over = [runs[k] for m in plan.members["f4"] for lbl, k in m.evals.items() if lbl == "over_steps"]
    assert len(over) == 24 and all("--all-steps" in r.argv and "limit=200" in r.argv for r in over)
    # every RL run and every pretrained model: the same final eval
    finals = {tuple(runs[k].argv[1:runs[k].argv.index("--checkpoint")]) for k in runs if k.endswith("/final")}
    assert len(finals) == 1 and sum(k.endswith("/final") for k in runs) == 78 + 10


def test_echolab_context_of_the_design(tmp_path):
    """The design/* context the expectations' preconditions read, from the resolved configs."""
    from echo_nemo.study.context import FindingView, context
    from echo_nemo.study.plan import write_plan
    from echo_nemo.study.report import study_expectations

    plan = plan_study(load_study(REPO / "recipes/study/echolab.yaml"), tmp_path)
    saved = json.loads(write_plan(plan).read_text())
    exp = study_expectations(plan.study_dir, saved)
    assert len(exp) == 16 and {e.finding for e in exp.values()} == {"f1", "f2", "f3", "f4", "f5", "f6"}

    def ctx(fid, name):
        """The context an expectation reads, less the accuracy floor every one of them has
        (acc_before/min: not measured before the pretrained models' final evals)."""
        got = context(FindingView(plan.study_dir, saved, fid), exp[name])
        assert got.pop("acc_before/min") is None
        return got

    assert ctx("f1", "f1_first_epoch") == {"design/rl_epochs": 2.0}  # 50 steps x 16 prompts / 400
    assert ctx("f1", "f1_coincides") == {"design/evals_per_run": 11.0}  # steps 0, 5, ..., 50
    assert ctx("f4", "f4_passk") == {"design/eval_problems": 200.0, "design/checkpoints": 7.0}
    assert ctx("f5", "f5_transfer") == {"acc_before/hard": None, "design/steps_gap": 1.0}  # 3-step vs 1-2
    assert ctx("f6", "f6_ei_underperforms") == {"design/same_final_eval": 1.0, "design/ppo_critic_warmup_steps": 5.0}
    # measured ones wait for their runs: the data builds' manifests, the calibrations
    assert ctx("f2", "f2_text_shift") == {"calibration/gap_top2@tiny": None, "design/param_ratio": None}
    # the fair builds' tokens: the code sources alike at every level, text 1x / 2x / 4x
    for name, k in (("echo_tg_omi1_omi2-fair", 1), ("echo_tg_omi1_2xomi2-fair", 2), ("echo_tg_omi1_4xomi2-fair", 4)):
        (plan.study_dir / "data" / name).mkdir(parents=True)
        sources = [{"name": "echo_tg", "tokens": 2557939}, {"name": "echo_omi1", "tokens": 2715773},
                   {"name": "echo_omi2", "tokens": k * 2709236}]
        manifest = {"vocab_size": 1024, "seq_length": 256, "sources": sources}
        (plan.study_dir / "data" / name / "manifest.json").write_text(json.dumps(manifest))
    # mini 638,976 and small 2,785,280 parameters at a 1024-token vocabulary
    assert ctx("f2", "f2_text_shift")["design/param_ratio"] == pytest.approx(2785280 / 638976)
    # code tokens seen: steps x 16 x 256 x code share; 1339 and 2018 steps for 1.339x and 2.018x the tokens
    code = 2557939 + 2715773
    seen = [steps * 16 * 256 * code / (code + k * 2709236) for steps, k in ((1000, 1), (1339, 2), (2018, 4))]
    assert ctx("f3", "f3_upweighted_share") == {"design/code_tokens_ratio_min": pytest.approx(min(seen) / seen[0]),
                                                "design/code_tokens_ratio_max": pytest.approx(max(seen) / seen[0]),
                                                "calibration/gap_top2": None}


def test_echolab_transfer_design(tmp_path):
    """RL on easy (1-2 step) prompts from the shared pretraining, the 3-step test problems
    evaluated before and after (validated: the easy/medium sets exist)."""
    plan = plan_study(load_study(REPO / "recipes/study/echolab.yaml", only=["f5"]), tmp_path)
    rl = plan.by_stage("rl")
    assert len(rl) == 6 and all("data.train=echolab_train_easy" in r.argv for r in rl)
    assert [r.key for r in plan.by_stage("pretrain")] == ["pretrain/base/seed-0", "pretrain/base/seed-1"]
    hard = [r for r in plan.by_stage("eval") if r.key.endswith("/hard")]
    assert [r.key for r in hard if r.key.startswith("eval/pretrain/")] == [
        "eval/pretrain/base/seed-0/hard", "eval/pretrain/base/seed-1/hard"]
    assert len(hard) == 8 and all("benchmarks=[echolab_medium]" in r.argv and "limit=264" in r.argv for r in hard)
    assert all(m.before["hard"] == f"eval/pretrain/base/seed-{m.pretrain_seed}/hard" for m in plan.members["f5"])
