"""The committed study recipes plan to the designs and grids they claim (dry-run level: every
run's recipe and overrides validated against the command's schema)."""

from __future__ import annotations

from collections import Counter

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
    plan = plan_study(load_study(REPO / "recipes/study/echolab.yaml", only=["f1", "f2", "f3", "f4", "f6"]), tmp_path)
    runs = {r.key: r for r in plan.runs}
    small = runs[next(iter(_pretrain_of(plan, "f2", "small")))]
    assert "model.scale=small" in small.argv and _levels(plan, "f2") == ["tiny", "small"]
    data = [runs[next(iter(_pretrain_of(plan, "f3", lv)))].after[0] for lv in ("1x", "4x", "8x")]
    assert data == ["data/echo_tg_omi1_omi2", "data/echo_tg_omi1_4xomi2", "data/echo_tg_omi1_8xomi2"]
    # the 1x mixture is f2's tiny level: same pretraining, same RL runs
    assert [m.rl for m in plan.members["f3"] if m.level == "1x"] == [m.rl for m in plan.members["f2"]
                                                                     if m.level == "tiny"]
    assert len(_levels(plan, "f4")) >= 3 and _levels(plan, "f6") == ["grpo", "ppo", "reinforce", "ei"]
    assert {_pretrain_of(plan, f, lv).pop() for f in ("f1", "f4", "f6") for lv in _levels(plan, f)} == {"pretrain/base"}
    assert len(plan.by_stage("pretrain")) == 4  # base, small, text4x, text8x
    # f1 3; one GRPO run per seed for f2's tiny, f3's 1x, f4's KL 0 and f6's GRPO level;
    # f2 small 3, f3 4x/8x 6, f4 KL 0.1/1.0 6, f6 PPO/REINFORCE/EI 9
    assert len(plan.by_stage("rl")) == 3 + 3 + 3 + 6 + 6 + 9 and plan.cfg.seeds == 3
    shared = (("f2", "tiny"), ("f3", "1x"), ("f4", "0"), ("f6", "grpo"))
    assert len({tuple(m.rl for m in plan.members[f] if m.level == lv) for f, lv in shared}) == 1


def test_echolab_transfer_design(tmp_path):
    """RL on easy (1-2 step) prompts from the shared pretraining, the 3-step test problems
    evaluated before and after (validated: the easy/medium sets exist)."""
    plan = plan_study(load_study(REPO / "recipes/study/echolab.yaml", only=["f5"]), tmp_path)
    rl = plan.by_stage("rl")
    assert len(rl) == 3 and all("data.train=echolab_train_easy" in r.argv for r in rl)
    assert [r.key for r in plan.by_stage("pretrain")] == ["pretrain/base"]
    before = [r for r in plan.by_stage("eval") if r.key.startswith("eval/pretrain/")]
    assert [r.key for r in before] == ["eval/pretrain/base/medium"]
    assert all("benchmarks=[echolab_medium]" in r.argv for r in plan.by_stage("eval"))
    assert all(m.before == {"medium": "eval/pretrain/base/medium"} for m in plan.members["f5"])
