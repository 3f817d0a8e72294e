"""The smoke quickstart end to end through the real CLI, and the before/after summary logic."""

from __future__ import annotations

import json

import pytest

from echo_nemo.metrics import read_metrics
from echo_nemo.quickstart import summarize
from echo_nemo.report.plots import format_share_figure
from echo_nemo.reward.formats import FORMATS


def _results(shares: dict[str, float], greedy_acc: float) -> dict:
    formats = {f: {"count": int(100 * shares.get(f, 0.0)), "share": shares.get(f, 0.0), "acc": 0.5} for f in FORMATS}
    return {"sampling": {"temperature": 0.7}, "benchmarks": {"echolab": {
        "problems": 100, "pass@1": greedy_acc, "sample_acc": greedy_acc, "k": 8, "maj_at_k": greedy_acc, "n": 8,
        "formats": formats, "greedy_formats": formats}}}


def test_summarize_checks_the_claim():
    before = _results({"tinygsm": 0.33, "llm_code": 0.39, "text": 0.28}, 0.6)
    after = _results({"tinygsm": 0.07, "llm_code": 0.93}, 0.9)
    s = summarize(before, after)
    assert s["before"]["dominant_format"] == "llm_code" and s["before"]["dominant_share"] == 0.39
    assert s["after"]["dominant_format"] == "llm_code" and s["after"]["temperature"] == 0.7
    assert all(s["checks"].values())
    # a collapse into unparseable output is not a winning format, and accuracy must rise
    junk = _results({"other": 0.95, "text": 0.05}, 0.1)
    s = summarize(_results({"tinygsm": 0.7, "text": 0.3}, 0.5), junk)
    assert list(s["checks"].values()) == [False, False, False]
    assert s["after"]["dominant_format"] == "text"


@pytest.mark.slow  # the README's first command end to end (~1 min of a 2-core machine): `pytest -m slow`
def test_smoke_quickstart_end_to_end(tmp_path, cli):
    out = tmp_path / "qs"
    r = cli("quickstart", "--budget", "smoke", "--out", out, "--seed", "3", timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "before RL" in r.stdout and "after RL" in r.stdout and "report:" in r.stdout

    # every stage wrote its run dir
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["num_sequences"] > 0 and manifest["seq_length"] == 128
    pre = read_metrics(out / "pretrain")
    assert pre and pre[-1]["step"] == 40 and pre[-1]["loss"] < pre[0]["loss"]
    assert (out / "pretrain" / "checkpoints" / "step_40" / "meta.json").is_file()
    rl = read_metrics(out / "rl")
    assert [row["step"] for row in rl if "reward/mean" in row][-1] == 3
    assert all(f"format/{f}/share" in rl[-1] for f in FORMATS[:3])
    assert (out / "rl" / "checkpoints" / "step_3").is_dir()
    # the held-out eval ran at step 0 and during RL: the report draws curves, not lone points
    assert [row["step"] for row in rl if "acc/echolab/pass@1" in row] == [0, 1, 2, 3]
    fig = format_share_figure(rl, "greedy formats", prefix="eval/")
    assert not fig.axes[0].patches and fig.axes[0].collections  # a stacked area, no bars

    before = json.loads((out / "eval_before" / "results.json").read_text())
    after = json.loads((out / "eval_after" / "results.json").read_text())
    assert before["step"] == 40 and after["step"] == 3  # the final RL policy was evaluated
    assert before["checkpoint"].startswith(str(out / "pretrain"))
    for res in (before, after):
        b = res["benchmarks"]["echolab"]
        assert b["problems"] == 12 and b["n"] == 4
        assert sum(s["share"] for s in b["formats"].values()) == pytest.approx(1.0)

    # the summary is the eval results, not something else
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget"] == "smoke" and summary["seed"] == 3
    for side, res in (("before", before), ("after", after)):
        b = res["benchmarks"]["echolab"]
        assert summary[side]["pass@1_greedy"] == b["pass@1"]
        assert summary[side]["formats_sampled"] == {f: s["share"] for f, s in b["formats"].items()}
    assert set(summary["times_s"]) == {"data", "pretrain", "eval_before", "rl", "eval_after", "report"}
    assert len(summary["checks"]) == 3

    index = out / "report" / "index.html"
    page = index.read_text()
    pngs = list((out / "report").glob("*.png"))
    assert {"rl_format_share.png", "rl_eval_format_share.png", "rl_accuracy_reward.png", "pass_at_k_echolab.png",
            "formats_echolab.png"} <= {p.name for p in pngs}
    for p in pngs:
        assert p.stat().st_size > 5000 and f'href="{p.name}"' in page
    assert str(index) == summary["report"]


def test_quickstart_bad_budget_exits_2(tmp_path, cli):
    r = cli("quickstart", "--budget", "huge", "--out", tmp_path / "q")
    assert r.returncode == 2 and "huge" in r.stderr
    assert not (tmp_path / "q").exists()


def test_quickstart_overrides_parse_and_reject(tmp_path, cli):
    from echo_nemo.quickstart import parse_overrides

    got = parse_overrides(["rl:optim.lr=1e-4", "eval:limit=100", "rl:steps=5"])
    assert got["rl"] == ["optim.lr=1e-4", "steps=5"] and got["eval"] == ["limit=100"] and got["data"] == []
    r = cli("quickstart", "--budget", "smoke", "--out", tmp_path / "q", "--set", "train.steps=5")
    assert r.returncode == 2 and "STAGE:key=value" in r.stderr
    r = cli("quickstart", "--budget", "smoke", "--out", tmp_path / "q", "--pretrained", tmp_path / "none")
    assert r.returncode == 2 and "none" in r.stderr
    assert not (tmp_path / "q").exists()
