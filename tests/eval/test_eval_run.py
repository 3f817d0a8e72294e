"""`echo-nemo eval` end to end on a real (randomly initialised, debug-size) megatron checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from echo_nemo.eval.metrics import maj_at_k, pass_at_k

MAKE_CKPT = """
import sys, torch
from echo_nemo import distributed as D
from echo_nemo.model.build import ModelConfig, build_gpt
from echo_nemo.tokenizer import load_tokenizer
from echo_nemo.checkpoint import save_checkpoint
D.init_distributed(tp=1, seed=0)
tok = load_tokenizer()
cfg = ModelConfig(scale="debug", vocab_size=tok.vocab_size)
model = build_gpt(cfg, tok.vocab_size)
save_checkpoint(sys.argv[1], 7, model, model_config=cfg, tokenizer=str(tok.path))
"""


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ckpt") / "run"
    subprocess.run([sys.executable, "-c", MAKE_CKPT, str(run)], check=True, timeout=300)
    return run


def test_eval_cli_writes_consistent_results(checkpoint_run, tmp_path, cli):
    out = tmp_path / "eval"
    r = cli("eval", "--checkpoint", checkpoint_run, "--benchmarks", "echolab", "--limit", "3", "--samples", "4",
            "--out", out, "--label", "before RL", "max_new_tokens=12", "ks=[1,2,4]", "batch_size=5")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pass@1" in r.stdout and "echolab" in r.stdout  # the terminal table
    # progress on stderr: the checkpoint load, then both passes counted in problems / samples
    assert "[checkpoint] loaded" in r.stderr
    # (bars that close fast may never draw 100%: the unit and the totals are what always show)
    assert "echolab greedy:" in r.stderr and "/3 [" in r.stderr and "problem/s" in r.stderr
    assert "echolab sampled (3 problems x 4):" in r.stderr and "/12 [" in r.stderr and "sample/s" in r.stderr

    res = json.loads((out / "results.json").read_text())
    assert res["label"] == "before RL" and res["step"] == 7
    b = res["benchmarks"]["echolab"]
    assert b["problems"] == 3 and b["n"] == 4 and set(b["pass_at_k"]) == {"1", "2", "4"}
    assert sum(f["share"] for f in b["formats"].values()) == pytest.approx(1.0)

    # recompute every figure from the per-sample records the run wrote
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    greedy = [s for s in samples if s["mode"] == "greedy"]
    sampled = [s for s in samples if s["mode"] == "sample"]
    assert len(greedy) == 3 and len(sampled) == 12
    assert b["pass@1"] == pytest.approx(sum(s["reward"] for s in greedy) / 3)
    by_problem: dict[str, list[dict]] = {}
    for s in sampled:
        by_problem.setdefault(s["problem"], []).append(s)
    for k in (1, 2, 4):
        expected = sum(pass_at_k(4, sum(s["reward"] > 0.5 for s in v), k) for v in by_problem.values()) / 3
        assert b["pass_at_k"][str(k)] == pytest.approx(expected)
    maj = sum(maj_at_k([s["answer"] for s in v], [s["reward"] > 0.5 for s in v], 4) for v in by_problem.values())
    assert b["maj_at_k"] == pytest.approx(maj / 3)
    for fmt, st in b["formats"].items():
        assert st["count"] == sum(s["format"] == fmt for s in sampled)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 7 and rows[-1]["acc/echolab/pass@1"] == b["pass@1"]
    assert rows[-1]["acc/echolab/maj@4"] == b["maj_at_k"] and "acc/echolab/pass@4" in rows[-1]
    assert (out / "config.yaml").read_text().count("checkpoint:") == 1

    # evaluating the same checkpoint again replaces its row instead of adding one
    r = cli("eval", "--checkpoint", checkpoint_run, "--benchmarks", "echolab", "--limit", "1", "--samples", "0",
            "--out", out, "max_new_tokens=4")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "acc/echolab/maj@4" not in rows[0]


def test_eval_bad_input_exits_2(checkpoint_run, tmp_path, cli):
    r = cli("eval", "--checkpoint", checkpoint_run, "--benchmarks", "echolab,nope", "--out", tmp_path / "e")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = cli("eval", "--checkpoint", tmp_path / "missing", "--benchmarks", "echolab", "--out", tmp_path / "e")
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr
    r = cli("eval", "--checkpoint", checkpoint_run, "--benchmarks", "gsm8k", "--out", tmp_path / "e",
            "data_paths.gsm8k=" + str(tmp_path / "nofile.jsonl"))
    assert r.returncode == 2 and "nofile.jsonl" in r.stderr
    assert not (tmp_path / "e" / "results.json").exists()


def test_eval_at_tp2_matches_tp1(checkpoint_run, tmp_path, cli):
    """Two gloo processes with the model split in two give the same greedy generations."""
    outs = {}
    for tp in (1, 2):
        out = tmp_path / f"tp{tp}"
        r = cli("eval", "--checkpoint", checkpoint_run, "--benchmarks", "echolab", "--limit", "2", "--samples", "0",
                "--out", out, f"parallel.tp={tp}", "max_new_tokens=10", nproc=tp)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[tp] = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        assert json.loads((out / "config.yaml").read_text().split("tp:")[1].split()[0]) == tp
    # TP > 1 without a launcher: exit 2 with the torchrun line to use
    r = cli("eval", "--checkpoint", checkpoint_run, "--benchmarks", "echolab", "--out", tmp_path / "x", "parallel.tp=2")
    assert r.returncode == 2 and "torchrun --nproc-per-node 2" in r.stderr and "Traceback" not in r.stderr
    assert len(outs[1]) == 2
    assert [s["completion"] for s in outs[2]] == [s["completion"] for s in outs[1]]


def test_eval_recipe_without_checkpoint_exits_2(cli, tmp_path):
    r = cli("eval", "--benchmarks", "echolab", "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and "checkpoint" in r.stderr and "Traceback" not in r.stderr
