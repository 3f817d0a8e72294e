"""`echo-nemo eval` over a run's checkpoints, on a real run dir of debug-size megatron
checkpoints: kept study steps plus step 0 (the run's model.init), resumable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from echo_nemo.errors import UserError
from echo_nemo.eval.config import EvalConfig, EvalSamplingConfig
from echo_nemo.eval.run import results_to_metrics, run_eval
from echo_nemo.eval.steps import plan_steps, run_eval_steps

KEPT = (1, 4)  # the "log-spaced" steps; step 2 is a resume checkpoint


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory) -> Path:
    """root/pre: the model RL starts from (step 40); root/rl: an RL run dir whose
    config.yaml names it as model.init, with checkpoints at steps 1, 2 and 4 (1 and 4
    kept), each with its own weights."""
    from echo_nemo import distributed as D
    from echo_nemo.checkpoint import save_checkpoint
    from echo_nemo.config import save_config
    from echo_nemo.model.build import ModelConfig, build_gpt
    from echo_nemo.rl.config import RLConfig, RLModelConfig
    from echo_nemo.tokenizer import load_tokenizer

    if not torch.distributed.is_initialized():
        D.init_distributed(tp=1, seed=0)
    root = tmp_path_factory.mktemp("steps")
    tok = load_tokenizer()
    cfg = ModelConfig(scale="debug", vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = build_gpt(cfg, tok.vocab_size)
    save_checkpoint(root / "pre", 40, model, model_config=cfg, tokenizer=str(tok.path))
    run = root / "rl"
    save_config(RLConfig(run_dir=str(run), model=RLModelConfig(init=str(root / "pre"))), run)
    for step in (1, 2, 4):
        with torch.no_grad():  # a different model at every step, as training makes it
            for p in model.parameters():
                p.add_(0.5 * p.std() * torch.randn_like(p))
        save_checkpoint(run, step, model, model_config=cfg, tokenizer=str(tok.path), kind="rl", keep_last=5,
                        keep_steps=KEPT)
    return run


def _cfg(run: Path, out: Path, **kw) -> EvalConfig:
    base = dict(checkpoint=str(run), run_dir=str(out), all_steps=True, benchmarks=["echolab_hard"], limit=2,
                max_new_tokens=6, sampling=EvalSamplingConfig(n=2, temperature=0.7), ks=[1, 2], batch_size=4)
    return EvalConfig(**{**base, **kw})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "steps").glob("*.json")}


def test_eval_over_steps_one_row_per_step_resumes_and_skips(rl_run, tmp_path, capsys):
    out = tmp_path / "over_steps"
    stored = run_eval_steps(_cfg(rl_run, out), show_progress=False)
    assert sorted(stored) == [0, *KEPT]  # kept checkpoints and the init; not the resume one
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["step_0.json", "step_1.json", "step_4.json"]
    rows = _lines(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 4]
    for r in rows:
        res = json.loads((out / "steps" / f"step_{r['step']}.json").read_text())
        assert res["step"] == r["step"] and res["benchmarks"]["echolab_hard"]["problems"] == 2
        assert {k: v for k, v in r.items() if k not in ("step", "time/eval_s")} == results_to_metrics(res["benchmarks"])
        assert {"acc/echolab_hard/pass@1", "acc/echolab_hard/pass@2", "acc/echolab_hard/maj@2"} <= set(r)
    init = json.loads((out / "steps" / "step_0.json").read_text())
    assert Path(init["checkpoint"]).parent.parent.name == "pre" and init["checkpoint_step"] == 40
    # every step evaluated its own weights: the generations differ between checkpoints
    comps = {s: [x["completion"] for x in _lines(out / "samples" / f"step_{s}.jsonl")] for s in (0, *KEPT)}
    assert len(comps[0]) == 2 + 2 * 2 and comps[0] != comps[1] != comps[4]
    # loading into the one model object gives what a fresh single-checkpoint eval gives
    single = tmp_path / "single"
    run_eval(_cfg(rl_run / "checkpoints" / "step_4", single, all_steps=False), show_progress=False)
    assert [x["completion"] for x in _lines(single / "samples.jsonl")] == comps[4]
    assert json.loads((single / "results.json").read_text())["benchmarks"] == stored[4]["benchmarks"]

    # a rerun skips every step (said on stderr) and rewrites nothing
    before, metrics_before = _mtimes(out), (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    run_eval_steps(_cfg(rl_run, out), show_progress=False)
    err = capsys.readouterr().err
    assert all(f"step {s}: " in err and "exists, skipped" in err for s in (0, *KEPT))
    assert "loading" not in err  # no checkpoint was even loaded
    assert _mtimes(out) == before and (out / "metrics.jsonl").read_text() == metrics_before
    # an interrupted eval (step 1's results never written) resumes with that step only
    (out / "steps" / "step_1.json").unlink()
    run_eval_steps(_cfg(rl_run, out), show_progress=False)
    after = _mtimes(out)
    assert after["step_0.json"] == before["step_0.json"] and after["step_4.json"] == before["step_4.json"]
    assert after["step_1.json"] != before["step_1.json"]
    assert [r["step"] for r in _lines(out / "metrics.jsonl")] == [0, 1, 4]
    # a subset by step: the resume checkpoint joins, metrics stay one row per step, sorted
    stored = run_eval_steps(_cfg(rl_run, out, all_steps=False, steps=[2]), show_progress=False)
    assert sorted(stored) == [0, 1, 2, 4] and [r["step"] for r in _lines(out / "metrics.jsonl")] == [0, 1, 2, 4]
    # other settings into the same folder: an error, not a silent mix of two evaluations
    with pytest.raises(UserError, match="max_new_tokens"):
        run_eval_steps(_cfg(rl_run, out, max_new_tokens=7), show_progress=False)
    assert _mtimes(out)["step_2.json"] and len(_lines(out / "metrics.jsonl")) == 4


def test_a_step_takes_the_results_of_an_eval_of_its_checkpoint_made_alike(rl_run, tmp_path, capsys):
    fresh = run_eval_steps(_cfg(rl_run, tmp_path / "fresh"), show_progress=False)
    last = tmp_path / "last"  # the run's final eval (its latest checkpoint: step 4)
    run_eval(_cfg(rl_run, last, all_steps=False), show_progress=False)
    init = tmp_path / "init"  # the pretraining's
    run_eval(_cfg(rl_run.parent / "pre", init, all_steps=False), show_progress=False)
    other = tmp_path / "other"  # step 1 evaluated with other settings: not reused
    run_eval(_cfg(rl_run / "checkpoints" / "step_1", other, all_steps=False, max_new_tokens=7), show_progress=False)
    out = tmp_path / "reused"
    capsys.readouterr()
    stored = run_eval_steps(_cfg(rl_run, out, reuse=[str(last), str(init), str(other), str(tmp_path / "nothing")]),
                            show_progress=False)
    err = capsys.readouterr().err
    assert f"step 4: results of {last}" in err and f"step 0: results of {init}" in err and "step 1: results" not in err
    assert [stored[s].get("reused_from") for s in (0, 1, 4)] == [str(init), None, str(last)]
    # the same numbers and samples as evaluating the steps, and the same metrics rows
    for s in (0, 1, 4):
        assert stored[s]["benchmarks"] == fresh[s]["benchmarks"]
        assert stored[s]["checkpoint_step"] == fresh[s]["checkpoint_step"]
        assert _lines(out / "samples" / f"step_{s}.jsonl") == _lines(tmp_path / "fresh" / "samples" / f"step_{s}.jsonl")
    strip = [{k: v for k, v in r.items() if k != "time/eval_s"} for r in _lines(out / "metrics.jsonl")]
    assert strip == [{k: v for k, v in r.items() if k != "time/eval_s"} for r in _lines(tmp_path / "fresh" / "metrics.jsonl")]
    # another batch size draws other samples: not reused
    stored = run_eval_steps(_cfg(rl_run, tmp_path / "b2", batch_size=2, reuse=[str(last)]), show_progress=False)
    assert stored[4].get("reused_from") is None


def test_which_steps_and_bad_run_dirs(rl_run, tmp_path):
    assert [s for s, _ in plan_steps(rl_run)] == [0, 1, 4]
    assert [s for s, _ in plan_steps(rl_run / "checkpoints", [4, 2])] == [2, 4]
    with pytest.raises(UserError, match=r"no checkpoint at step\(s\) \[3\]; it has steps 0, 1, 2, 4") as e:
        plan_steps(rl_run, [1, 3])
    assert str(rl_run) in str(e.value)
    with pytest.raises(UserError, match="no complete checkpoint") as e:
        plan_steps(tmp_path)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(UserError, match="is one checkpoint"):
        plan_steps(rl_run / "checkpoints" / "step_1")
    # a run with no recorded init has no step 0
    bare = tmp_path / "bare"
    shutil.copytree(rl_run / "checkpoints", bare / "checkpoints")
    assert [s for s, _ in plan_steps(bare)] == list(KEPT)
    with pytest.raises(UserError, match="no model.init"):
        plan_steps(bare, [0])
    # an init that moved away: named, with the way out
    (bare / "config.yaml").write_text("model:\n  init: " + str(tmp_path / "gone") + "\n")
    with pytest.raises(UserError, match="model.init=.*gone.*--steps without 0"):
        plan_steps(bare)


def test_eval_cli_over_steps(rl_run, tmp_path, cli):
    out = tmp_path / "cli"
    r = cli("eval", "--checkpoint", rl_run, "--steps", "0,4", "--out", out, "--benchmarks", "echolab_hard",
            "--limit", "1", "--samples", "0", "max_new_tokens=4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eval over steps (rl)" in r.stderr and "/2 [" in r.stderr  # the bar over checkpoints
    assert "echolab_hard/pass@1" in r.stdout  # the per-step table
    assert [row["step"] for row in _lines(out / "metrics.jsonl")] == [0, 4]
    r = cli("eval", "--checkpoint", rl_run, "--all-steps", "--steps", "0,3", "--out", out, "--benchmarks", "echolab")
    assert r.returncode == 2 and "has steps 0, 1, 2, 4" in r.stderr and str(rl_run) in r.stderr
    assert "Traceback" not in r.stderr
    assert [row["step"] for row in _lines(out / "metrics.jsonl")] == [0, 4]  # nothing lost
