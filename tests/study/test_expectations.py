"""Pre-registered expectations: the echo-lab study's section loads typed, bad keys exit 2, and
evaluating one gives the verdict with its interval and the expectation's text."""

from __future__ import annotations

import numpy as np
import pytest
from study_helpers import REPO

from echo_nemo.errors import UserError
from echo_nemo.study.expectations import Expectation, Precondition, evaluate, load_expectations
from echo_nemo.study.stats import HOLDS, INCONCLUSIVE, NOT_HOLDS, NOT_TESTABLE

RECIPE = REPO / "recipes/study/_echolab_expectations.yaml"


def test_the_echolab_expectations_load_for_all_six_findings():
    exps = load_expectations(RECIPE)
    assert {e.finding for e in exps.values()} == {"f1", "f2", "f3", "f4", "f5", "f6"}
    assert all(isinstance(e, Expectation) and e.expectation and e.claim for e in exps.values())
    # the directions the issue pre-registers
    assert (exps["f2_text_shift"].contrast, exps["f2_text_shift"].direction) == (["mini", "small"], 1)
    assert exps["f2_small_to_code"].direction == -1 and exps["f2_large_to_text"].direction == 1
    assert (exps["f3_upweighted_wins"].contrast, exps["f3_upweighted_wins"].direction) == (["1x", "4x"], 1)
    assert exps["f4_minority"].contrast == ["0.001", "0.01"] and exps["f4_minority"].direction == 1
    assert exps["f4_passk"].direction == -1
    floor = [p for p in exps["f5_transfer"].preconditions if p.quantity == "acc_before/hard"]
    assert floor and (floor[0].op, floor[0].value) == (">=", 0.10)
    assert exps["f1_coincides"].quantity == "gain_window_distance"  # two-sided: a distance to the window
    assert all(any(p.quantity == "design/same_final_eval" for p in exps[k].preconditions)
               for k in ("f6_grpo_collapses", "f6_ei_mild", "f6_ei_underperforms"))
    gap = [p for p in exps["f2_text_shift"].preconditions if p.quantity == "calibration/gap_top2@tiny"]
    assert gap and gap[0].value == 0.05


@pytest.mark.parametrize("override, needle", [
    ("expectations.f2_text_shift.direcion=1", "unknown config key"),
    ("expectations.f2_text_shift.direction=0", "direction must be 1 or -1"),
    ("expectations.f2_text_shift.effect=-0.1", "effect must be >= 0"),
    ("expectations.f2_text_shift.contrast=[a,b,c]", "contrast takes"),
    ("expectations.f2_text_shift.preconditions.0.op='=='", "op must be one of"),
    ("expectations.f2_text_shift.direction=up", "wrong type"),
])
def test_a_wrong_key_or_value_is_a_user_error(override, needle):
    with pytest.raises(UserError, match=needle):
        load_expectations(RECIPE, [override])


def test_a_wrong_key_in_a_file_exits_2_through_the_cli_error_path(tmp_path):
    bad = tmp_path / "exp.yaml"
    bad.write_text("expectations:\n  x: {finding: f1, expectation: e, quantity: q, directon: 1}\n")
    with pytest.raises(UserError, match="directon"):
        load_expectations(bad)


def _groups(mean: float, seed: int, sd: float = 0.03) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [list(rng.normal(mean, sd, 3)) for _ in range(2)]  # 2 pretraining x 3 RL seeds


def test_evaluate_gives_each_outcome_with_the_expectation_beside_it():
    exps = load_expectations(RECIPE)
    e = exps["f2_text_shift"]
    ok = {"calibration/gap_top2@tiny": 0.03, "acc_before/min": 0.4, "design/param_ratio": 4.5}
    res = evaluate("f2_text_shift", e, {"mini": _groups(-0.2, 1), "small": _groups(0.3, 2)}, ok)
    assert res.outcome.verdict == HOLDS and res.outcome.interval.estimate == pytest.approx(0.5, abs=0.05)
    assert e.expectation in res.line() and "holds" in res.line() and "text_share_change(small)" in res.line()
    # the wrong direction: the smaller model moves to text
    res = evaluate("f2_text_shift", e, {"mini": _groups(0.3, 3), "small": _groups(-0.2, 4)}, ok)
    assert res.outcome.verdict == NOT_HOLDS
    res = evaluate("f2_text_shift", e, {"mini": _groups(0.0, 5, 0.3), "small": _groups(0.1, 6, 0.3)}, ok)
    assert res.outcome.verdict == INCONCLUSIVE
    # formats 12 points apart before RL: not testable here, with the reason
    res = evaluate("f2_text_shift", e, {"mini": _groups(-0.2, 1), "small": _groups(0.3, 2)},
                   {**ok, "calibration/gap_top2@tiny": 0.12})
    assert res.outcome.verdict == NOT_TESTABLE and "within 5 points" in res.outcome.reason
    assert "0.12" in res.outcome.reason and res.outcome.interval is None
    # a precondition quantity never measured, and a level with too few runs
    res = evaluate("f2_text_shift", e, {"mini": _groups(-0.2, 1), "small": _groups(0.3, 2)}, {})
    assert res.outcome.verdict == NOT_TESTABLE and "was not measured" in res.outcome.reason
    res = evaluate("f2_text_shift", e, {"mini": [[0.1]], "small": _groups(0.3, 2)}, ok)
    assert res.outcome.verdict == NOT_TESTABLE and "level mini: 1 run(s)" in res.outcome.reason


def test_pooled_and_single_level_means_and_a_null_other_than_zero():
    e = Expectation(finding="f1", expectation="top share above 90%", quantity="top_share_final",
                    direction=1, null_value=0.9, preconditions=[Precondition("design/rl_epochs", ">=", 1.0)])
    runs = {"grpo": [[0.97, 0.99, 0.95], [0.98, 0.96, 0.99]]}
    assert evaluate("c", e, runs, {"design/rl_epochs": 2.0}).outcome.verdict == HOLDS
    low = {"grpo": [[0.6, 0.7, 0.65], [0.62, 0.68, 0.7]]}
    assert evaluate("c", e, low, {"design/rl_epochs": 2.0}).outcome.verdict == NOT_HOLDS
    single = Expectation(finding="f6", expectation="e", quantity="q", contrast=["grpo"], null_value=0.9)
    assert evaluate("s", single, {**runs, "ppo": low["grpo"]}).outcome.verdict == HOLDS
    assert evaluate("s", single, {}).outcome.verdict == NOT_TESTABLE


def test_group_runs_evaluate_all_and_the_table():
    from echo_nemo.study.expectations import evaluate_all, group_runs, table

    assert group_runs([(0, 0.1), (1, 0.5), (0, 0.2), (1, None), (2, None)]) == [[0.1, 0.2], [0.5]]
    exps = load_expectations(RECIPE)
    ctx = {"calibration/gap_top2": 0.02, "calibration/gap_top2@tiny": 0.02, "acc_before/min": 0.3, "design/param_ratio": 5.9}
    values = {"f2_small_to_code": {"mini": group_runs([(0, -0.4), (0, -0.3), (0, -0.35), (1, -0.3), (1, -0.45),
                                                      (1, -0.4)])}}
    done = evaluate_all(exps, values, ctx, resamples=500)
    assert [d.name for d in done] == list(exps)
    by = {d.name: d.outcome.verdict for d in done}
    assert by["f2_small_to_code"] == HOLDS and by["f4_minority"] == NOT_TESTABLE  # nothing measured for f4
    md = table(done)
    assert md.count("\n") == len(exps) + 1 and "the smallest model's text share falls under RL" in md
    assert "text_share_change at mini < 0" in md and "6 runs" in md
