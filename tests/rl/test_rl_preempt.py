"""RL under preemption: a real SIGTERM to the real `echo-nemo rl` process, resume
checkpoints every `checkpoint.every` steps beside the log-spaced ones, the eval-size hint."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rl_helpers import CharTokenizer, Prompt, starts_with_reward

from echo_nemo import checkpoint as C
from echo_nemo.distributed import free_port
from echo_nemo.metrics import read_metrics
from echo_nemo.preempt import EXIT_REQUEUE
from echo_nemo.rl.config import RLConfig
from echo_nemo.rl.run import open_run
from echo_nemo.schedule import log_spaced_steps

REPO = Path(__file__).resolve().parents[2]
RECIPE = "recipes/rl/grpo_echolab_tiny.yaml"
STEPS = 8
ARGS = ["model.init=null", "model.scale=debug", f"steps={STEPS}", "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=4", "rollout.max_new_tokens=10", "data.eval_limit=3", "eval_every=3",
        "eval_max_new_tokens=10", "num_checkpoints=3", "checkpoint.every=3", "checkpoint.keep_last=1",
        "reward.in_process=true", "optim.lr=1e-3", "seed=7"]


def _rl(run_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
    return subprocess.Popen([sys.executable, "-m", "echo_nemo.cli", "rl", RECIPE, *ARGS, f"run_dir={run_dir}"],
                            cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def _steps(run_dir: Path) -> list[int]:
    """The RL steps logged (step 0 is the eval before training)."""
    return [r["step"] for r in read_metrics(run_dir) if r["step"] > 0]


@pytest.mark.slow  # three RL processes (~1 min); test_rl_algorithms.py checks resuming by default
def test_rl_sigterm_saves_exits_75_and_the_rerun_continues_exactly(tmp_path):
    full = tmp_path / "full"
    p = _rl(full, tmp_path / "full.log")
    assert p.wait(timeout=600) == 0, (tmp_path / "full.log").read_text()[-3000:]
    # the log-spaced ones (kept forever; 1 and 8 of 8) are all that is left at the end:
    # the periodic 3 and 6 went as newer ones came (keep_last=1)
    log_spaced = log_spaced_steps(STEPS, 3)
    assert [s for s, _ in C.complete_checkpoints(full)] == log_spaced == [1, 8]
    assert all(C.read_meta(p)["keep"] for _, p in C.complete_checkpoints(full))

    run = tmp_path / "run"
    log = tmp_path / "first.log"
    p = _rl(run, log)
    deadline = time.time() + 300
    while len(_steps(run)) < 4:  # past the step-3 periodic checkpoint
        assert p.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.01)
    signalled_after = max(_steps(run))
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=300) == EXIT_REQUEUE, log.read_text()[-3000:]
    assert "caught SIGTERM" in log.read_text()
    stopped = C.read_meta(C.latest_checkpoint(run))["step"]
    assert signalled_after <= stopped <= signalled_after + 1 < STEPS + 1
    # the step-1 study checkpoint and the resume checkpoint (the periodic step 3 was pruned)
    assert [s for s, _ in C.complete_checkpoints(run)] == [1, stopped]
    assert not C.read_meta(C.latest_checkpoint(run))["keep"]
    assert _steps(run) == list(range(1, stopped + 1))

    p = _rl(run, tmp_path / "second.log")
    assert p.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    ref, got = read_metrics(full)[1:], read_metrics(run)
    assert [r["step"] for r in got] == list(range(0, STEPS + 1))  # one step-0 eval, no step twice
    got = got[1:]
    for a, b in zip(ref, got):
        assert a["reward/mean"] == b["reward/mean"], a["step"]
        assert abs(a["loss/policy"] - b["loss/policy"]) <= 1e-6, (a["step"], a["loss/policy"], b["loss/policy"])
    # the study's checkpoints survived every pruning (the resume checkpoint did not)
    assert set(log_spaced) <= {s for s, _ in C.complete_checkpoints(run)}


def test_pruning_never_deletes_a_checkpoint_marked_keep(tmp_path):
    import json

    root = C.checkpoints_dir(tmp_path)
    for step, keep in ((1, True), (2, False), (3, False), (4, True), (5, False)):
        (root / f"step_{step}").mkdir(parents=True)
        (root / f"step_{step}" / C.META).write_text(json.dumps({"step": step, "keep": keep}))
    # a resumed run whose config no longer lists 1 or 4 among its keep steps
    C._prune(tmp_path, keep_last=1, keep=set())
    assert [s for s, _ in C.complete_checkpoints(tmp_path)] == [1, 4, 5]
    assert C.prunable([1, 2, 3, 4, 5], 2, {1}) == [2, 3]


def test_rl_hint_names_eval_limit_when_the_eval_is_large(tmp_path):
    cfg = RLConfig(run_dir=str(tmp_path / "r"), steps=1, eval_max_new_tokens=1024)
    cfg.data.eval = "gsm8k_test"
    kw = dict(reward_fn=starts_with_reward("a"), problems=[Prompt("q", "1")], tokenizer=CharTokenizer())
    with open_run(cfg, eval_problems=[Prompt(f"q{i}", "1") for i in range(1319)], **kw) as run:
        hint = run.evaluator.hint()
    assert "1319" in hint and "1024" in hint and "data.eval_limit" in hint
    with open_run(cfg, eval_problems=[Prompt(f"q{i}", "1") for i in range(8)], **kw) as run:
        assert run.evaluator.hint() is None


@pytest.mark.parametrize("bad", ["checkpoint.every=-1", "checkpoint.keep_last=0"])
def test_rl_checkpoint_section_rejects_bad_values(cli, tmp_path, bad):
    r = cli("rl", RECIPE, *ARGS, bad, f"run_dir={tmp_path / 'r'}")
    assert r.returncode == 2 and bad.split("=")[0] in r.stderr and "Traceback" not in r.stderr
