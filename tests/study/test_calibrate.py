"""Calibration: every format's forced greedy accuracy, scored by the real reward; on a debug
model pretrained a few steps on a smoke fair corpus; its preconditions give "not testable here"."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from study_helpers import REPO

from echo_nemo.data import echolab
from echo_nemo.study.calibrate import OPENINGS, score_forced
from echo_nemo.study.expectations import Expectation, Precondition, evaluate
from echo_nemo.study.stats import HOLDS, NOT_TESTABLE

GAP = Precondition("calibration/gap_top2", "<=", 0.05, "two strongest formats within 5 points before RL")
FLOOR = Precondition("calibration/acc_min", ">=", 0.10, "every format at least 10% accurate before RL")


def _solution(p: echolab.EchoProblem, fmt: str) -> str:
    return p.render(fmt) if fmt != "text" else OPENINGS["text"] + "\n" + p.render("text")


def test_score_forced_reports_each_formats_accuracy_by_the_real_reward():
    probs = list(echolab.generate(4, seed=0, split="test", max_steps=2))
    truths = [p.answer_str for p in probs]
    other = list(echolab.generate(4, seed=9, split="test", max_steps=2))
    assert all(a.answer_str != b.answer_str for a, b in zip(probs, other))
    comps = {
        "tinygsm": [_solution(probs[0], "tinygsm"), _solution(probs[1], "tinygsm"),
                    _solution(other[2], "tinygsm"), "def simple_math_problem() -> int:\n    result = = 3"],
        "llm_code": [_solution(p, "llm_code") for p in probs],
        "text": [_solution(probs[i], "text") for i in range(3)] + [_solution(other[3], "text")],
    }
    # two samples per problem for text: problem 0 right twice, 1 once, 2 and 3 never (3 of 8)
    sampled = {"text": [_solution(probs[0], "text")] * 2 + [_solution(probs[1], "text"), _solution(other[1], "text")]
               + [_solution(other[2], "text")] * 2 + [_solution(other[3], "text")] * 2}
    cal, records = score_forced(comps, truths, OPENINGS, sampled)
    assert {f: r.accuracy for f, r in cal.rows.items()} == {"tinygsm": 0.5, "llm_code": 1.0, "text": 0.75}
    assert cal.rows["text"].sampled_accuracy == 3 / 8 and cal.rows["llm_code"].sampled_accuracy is None
    assert cal.rows["tinygsm"].in_format == 0.75 and cal.rows["text"].in_format == 1.0
    assert cal.gap_top2 == pytest.approx(0.25) and [r.format for r in cal.ranked()] == ["llm_code", "text", "tinygsm"]
    table = cal.table()
    assert all(f"| {f} |" in table for f in OPENINGS) and "25.0 points" in table
    greedy = [r for r in records if r["mode"] == "greedy"]
    assert len(greedy) == 12 and sum(r["reward"] for r in greedy) == 9 and len(records) == 20
    ctx = cal.context()
    assert ctx["calibration/acc_min"] == 0.5 and ctx["calibration/acc/text"] == 0.75
    assert ctx["calibration/sampled_acc/text"] == 3 / 8 and "calibration/sampled_acc/tinygsm" not in ctx
    assert "| 0.375 |" in table
    # a finding that needs the formats within 5 points is not testable on this base model
    e = Expectation(finding="f2", expectation="the larger model moves to text", quantity="text_share_change",
                    contrast=["tiny", "medium"], effect=0.2, preconditions=[GAP])
    runs = {"tiny": [[-0.3, -0.2, -0.25], [-0.2, -0.3, -0.3]], "medium": [[0.3, 0.4, 0.3], [0.35, 0.3, 0.4]]}
    res = evaluate("f2_text_shift", e, runs, ctx)
    assert res.outcome.verdict == NOT_TESTABLE and "gap_top2 = 0.25, needs <= 0.05" in res.outcome.reason
    close = {**ctx, "calibration/gap_top2": 0.03}
    assert evaluate("f2_text_shift", e, runs, close).outcome.verdict == HOLDS


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A debug model pretrained 4 steps on a smoke fair corpus (text worked out step by step)."""
    root = tmp_path_factory.mktemp("calibrate")
    data, run = root / "data", root / "pretrain"
    cmd = [sys.executable, "-m", "echo_nemo.cli"]
    subprocess.run([*cmd, "data", "build", REPO / "recipes/data/echo_tg_omi1_omi2.yaml", "echolab.num_problems=60",
                    "echolab.num_background=0", "echolab.text_style=steps", "echolab.llm_code_wrong=0.2",
                    "seq_length=128", "sequences_per_shard=100", "num_workers=1", "--out", data],
                   check=True, capture_output=True, timeout=300, cwd=REPO)
    subprocess.run([*cmd, "pretrain", REPO / "recipes/pretrain/quickstart_smoke.yaml", "model.scale=debug",
                    "train.steps=4", "train.log_every=2", "checkpoint.every=4", "train.threads=1",
                    f"data.shards={data}", f"run_dir={run}"], check=True, capture_output=True, timeout=300, cwd=REPO)
    return run


@pytest.mark.slow  # a data build, a pretraining and a calibration: about a minute alone on 2 cores
def test_calibration_of_a_pretrained_debug_model(pretrained, tmp_path):
    out = tmp_path / "cal"
    r = subprocess.run([sys.executable, "-m", "echo_nemo.cli", "calibrate", str(pretrained), "limit=4",
                        "max_new_tokens=16", "batch_size=4", "samples=2", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "calibration.json").read_text())
    assert set(rep["formats"]) == set(OPENINGS) and all(f"| {f} |" in r.stdout for f in OPENINGS)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for fmt, row in rep["formats"].items():
        mine = [s for s in samples if s["forced"] == fmt and s["mode"] == "greedy"]
        drawn = [s for s in samples if s["forced"] == fmt and s["mode"] == "sample"]
        assert len(mine) == row["problems"] == 4 and len(drawn) == 8
        assert all(s["completion"].startswith(OPENINGS[fmt]) for s in mine + drawn)  # forced by its opening
        assert row["accuracy"] == pytest.approx(sum(s["reward"] for s in mine) / 4)
        assert row["in_format"] == pytest.approx(sum(s["format"] == fmt for s in mine) / 4)
        assert row["sampled_accuracy"] == pytest.approx(sum(s["reward"] for s in drawn) / 8)
    assert "| format | forced opening |" in (out / "calibration.md").read_text()
    # four pretraining steps learn no arithmetic: a finding with a 10% floor is not testable
    e = Expectation(finding="f5", expectation="hard accuracy rises", quantity="hard_acc_change", preconditions=[FLOOR])
    res = evaluate("f5_transfer", e, {"easy": [[0.1, 0.2, 0.15]]}, rep["context"])
    assert res.outcome.verdict == NOT_TESTABLE and "at least 10% accurate" in res.outcome.reason


@pytest.mark.slow
def test_bad_calibration_settings_exit_2(pretrained, tmp_path):
    r = subprocess.run([sys.executable, "-m", "echo_nemo.study.calibrate", str(pretrained), "openings.prose=x",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and "openings must name solution formats" in r.stderr
    r = subprocess.run([sys.executable, "-m", "echo_nemo.study.calibrate", str(pretrained), "limt=4"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and "unknown config key" in r.stderr
