"""Pretraining end to end through the real CLI: learning, TP/DP equivalence, exact resume
after SIGKILL, atomic saves, and TP-resharding checkpoints, on real echo-lab shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shared_helpers import run_cli

from echo_nemo.checkpoint import complete_checkpoints, latest_checkpoint, read_meta
from echo_nemo.distributed import free_port, run_distributed
from echo_nemo.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
RECIPE = "recipes/pretrain/debug.yaml"
STEPS = 40


def overrides(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.shards={shards}", f"run_dir={run_dir}", f"train.steps={STEPS}",
        "train.global_batch_size=8", "train.micro_batch_size=4", "train.threads=1",
        "checkpoint.every=8", "checkpoint.keep_last=2", "checkpoint.keep_steps=[8]", *extra,
    ]


def cli(*args: str, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI (conftest's run_cli) on one thread per process; it must succeed."""
    r = run_cli(*args, nproc=nproc, timeout=timeout, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


@pytest.fixture(scope="module")
def reference_run(echolab_shards: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    cli("pretrain", RECIPE, *overrides(echolab_shards, run))
    return run


@pytest.fixture(scope="module")
def tp2_run(echolab_shards: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tp2") / "run"
    cli("pretrain", RECIPE, *overrides(echolab_shards, run, "parallel.tp=2"), nproc=2)
    return run


def test_train_loss_decreases_and_run_dir_is_complete(reference_run: Path, echolab_shards: Path):
    # the echo-lab shards are best-fit packed: every test here also runs through the padding
    assert json.loads((echolab_shards / "manifest.json").read_text())["padding_tokens"] > 0
    rows = read_metrics(reference_run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first - 1.0, (first, last)  # ln(1024) = 6.9 at init
    for r in rows:
        assert r["grad_norm"] > 0 and r["throughput/tokens_per_s"] > 0 and 0 < r["mfu"] < 1
    # warmup 5 steps to 3e-3, then cosine towards 0.1x
    assert rows[0]["lr"] == pytest.approx(3e-3 / 5)
    assert rows[4]["lr"] == pytest.approx(3e-3)
    assert 0.1 * 3e-3 < rows[-1]["lr"] < 0.15 * 3e-3
    # keep-last-2 plus the explicit keep list
    assert [s for s, _ in complete_checkpoints(reference_run)] == [8, 32, 40]
    meta = read_meta(reference_run)
    assert meta["step"] == STEPS and meta["model"]["vocab_size"] == 1024
    assert (reference_run / "config.yaml").is_file()
    assert (reference_run / "tokenizer" / "tokenizer.json").is_file()
    assert any((reference_run / "tensorboard").iterdir())


def test_padding_is_no_target():
    import torch

    from echo_nemo.train.loop import real_targets

    row = torch.tensor([[5, 6, 0, 7, 8, 0, 0, 0]])  # two documents (EOS 0), then padding
    assert real_targets(row[:, :-1], row[:, 1:], eos=0).tolist() == [[True] * 5 + [False] * 2]


@pytest.mark.slow  # 2-rank pretrainings; tests/test_distributed.py checks TP=2 == TP=1 by default
def test_train_tp2_and_dp2_match_tp1_step_by_step(reference_run, tp2_run, echolab_shards, tmp_path):
    ref = losses(reference_run)
    tp2 = losses(tp2_run)
    assert sorted(tp2) == sorted(ref)
    for s in ref:
        assert abs(tp2[s] - ref[s]) <= 1e-5, (s, tp2[s], ref[s])
    # DP=2 with half the micro-batch: the same global batch, the same steps
    dp2_dir = tmp_path / "dp2"
    cli("pretrain", RECIPE, *overrides(echolab_shards, dp2_dir, "train.micro_batch_size=2",
                                       "checkpoint.every=0"), nproc=2)
    dp2 = losses(dp2_dir)
    for s in ref:
        assert abs(dp2[s] - ref[s]) <= 1e-5, (s, dp2[s], ref[s])


def _logits_of(ckpt: str, out: str, tokens: list[list[int]]) -> None:
    """Load `ckpt` at the current world size as TP and write the full logits (rank 0)."""
    import torch

    from echo_nemo import distributed as D
    from echo_nemo.checkpoint import load_model_for_inference
    from echo_nemo.model.forward import causal_forward

    world = int(os.environ.get("WORLD_SIZE", "1"))
    D.init_distributed(tp=world)
    model, _tok, cfg = load_model_for_inference(ckpt, parallel_output=False)
    with torch.no_grad():
        logits = causal_forward(model, torch.tensor(tokens), vocab_size=cfg.vocab_size)
    if D.is_main():
        torch.save(logits[..., : cfg.vocab_size].clone(), out)


@pytest.mark.slow  # 2-rank pretrainings; tests/test_distributed.py checks TP=2 == TP=1 by default
def test_train_checkpoints_reshard_between_tp2_and_tp1(reference_run, tp2_run, echolab_shards, tmp_path):
    import shutil

    import torch

    # a TP=2 checkpoint loads at TP=1 with the same weights it has at TP=2, and they are
    # the TP=1 run's weights (same steps) up to the drift of TP's other summation order
    # (max logit difference 4e-4 on an AVX-512 machine; a resharding error moves them by O(1))
    tokens = [[5, 17, 300, 2, 99, 1000, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]]
    out = {}
    for name, run, nproc in (("tp2", tp2_run, 1), ("tp2@tp2", tp2_run, 2), ("tp1", reference_run, 1)):
        path = tmp_path / f"{name}.pt"
        run_distributed(_logits_of, nproc, str(run), str(path), tokens)
        out[name] = torch.load(path)
    assert out["tp1"].shape == (2, 8, 1024)
    assert torch.allclose(out["tp2"], out["tp2@tp2"], atol=1e-5)
    assert torch.allclose(out["tp2"], out["tp1"], atol=5e-3)

    # a TP=1 checkpoint (weights, AdamW moments, schedule, data position) resumes at TP=2
    run = tmp_path / "tp1_then_tp2"
    shutil.copytree(reference_run, run)
    shutil.rmtree(run / "checkpoints" / f"step_{STEPS}")
    r = cli("pretrain", RECIPE, *overrides(echolab_shards, run, "parallel.tp=2"), nproc=2)
    assert f"tp=2 dp=1 accum=2, fp32, steps 32->{STEPS}" in r.stdout
    ref, got = losses(reference_run), losses(run)
    assert sorted(got) == sorted(ref)
    for s in range(33, STEPS + 1):
        assert abs(got[s] - ref[s]) <= 1e-5, (s, got[s], ref[s])


def _popen_pretrain(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "echo_nemo.cli", "pretrain", RECIPE, *args],
        cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _kill(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGKILL)  # the run and the checkpoint writers it forked
    p.wait(timeout=30)


def _resume_equals_reference(cli, args: list[str], resume_from: int, run, reference_run) -> None:
    """Rerun the interrupted pretraining: it resumes at `resume_from` and ends with the
    uninterrupted run's losses at every step (<= 1e-6)."""
    r = cli("pretrain", RECIPE, *args)
    assert f"steps {resume_from}->{STEPS}" in r.stdout
    ref, got = losses(reference_run), losses(run)
    assert sorted(got) == sorted(ref)
    for s in ref:
        assert abs(got[s] - ref[s]) <= 1e-6, (s, got[s], ref[s])


def test_train_losses_do_not_depend_on_the_malloc_settings(reference_run, echolab_shards, tmp_path):
    # the reference ran with echo_nemo.cpu.malloc's settings (every CLI command applies them)
    run = tmp_path / "glibc"
    r = run_cli("pretrain", RECIPE, *overrides(echolab_shards, run), env={"OMP_NUM_THREADS": "1", "ECHO_NEMO_MALLOC": "glibc"})
    assert r.returncode == 0, r.stderr[-4000:]
    assert losses(run) == losses(reference_run)


def test_train_resume_after_sigkill_is_exact(reference_run, echolab_shards, tmp_path):
    run = tmp_path / "killed"
    args = overrides(echolab_shards, run)
    p = _popen_pretrain(args, tmp_path / "first.log")
    deadline = time.time() + 240
    while time.time() < deadline and max(losses(run), default=0) < 12 and p.poll() is None:
        time.sleep(0.01)
    _kill(p)
    logged = max(losses(run), default=0)
    assert 12 <= logged < STEPS, f"the kill should land mid-training (last logged step {logged})"
    resume_from = read_meta(latest_checkpoint(run))["step"]
    assert resume_from == 8

    _resume_equals_reference(cli, args, resume_from, run, reference_run)


def test_train_killed_save_never_looks_complete(echolab_shards, tmp_path):
    # save every step, kill the moment a save folder appears
    for attempt in range(5):
        run = tmp_path / f"run{attempt}"
        args = overrides(echolab_shards, run, "checkpoint.every=1", "checkpoint.keep_last=100")
        p = _popen_pretrain(args, tmp_path / f"log{attempt}")
        ckdir = run / "checkpoints"
        caught = []
        while p.poll() is None and not caught:
            caught = [d for d in ckdir.glob("step_*.tmp")] if ckdir.is_dir() else []
            if len([d for d in ckdir.glob("step_*") if not d.name.endswith(".tmp")]) < 3:
                caught = []  # let a few saves complete first
            time.sleep(0.002)
        _kill(p)
        partial = sorted(ckdir.glob("step_*.tmp"))
        if partial:
            break
    assert partial, "never caught a save in flight"
    partial_step = int(partial[0].name[len("step_"):-len(".tmp")])
    assert not (partial[0] / "meta.json").exists()
    latest = latest_checkpoint(run)
    assert latest is not None
    last_complete = read_meta(latest)["step"]
    assert last_complete < partial_step
    for _step, path in complete_checkpoints(run):
        assert json.loads((path / "meta.json").read_text())["step"] == _step

    # the next start removes the debris, resumes from the last complete save and finishes
    # (saving less often now: the checkpoint policy does not change the training)
    r = cli("pretrain", RECIPE, *overrides(echolab_shards, run))
    assert f"steps {last_complete}->{STEPS}" in r.stdout
    assert "removed step_" in r.stdout
    assert not list(ckdir.glob("*.tmp"))
    assert read_meta(latest_checkpoint(run))["step"] == STEPS


def test_train_bad_input_exits_2_naming_the_problem(echolab_shards, tmp_path):
    launch = [sys.executable, "-m", "echo_nemo.cli", "pretrain", RECIPE]
    run = lambda *a: subprocess.run(launch + list(a), capture_output=True, text=True, cwd=REPO, timeout=120)  # noqa: E731
    r = run(f"data.shards={tmp_path / 'missing'}", f"run_dir={tmp_path / 'r1'}")
    assert r.returncode == 2 and "missing" in r.stderr and "data build" in r.stderr
    r = run(f"data.shards={echolab_shards}", "train.global_batch_size=6", f"run_dir={tmp_path / 'r2'}")
    assert r.returncode == 2 and "global_batch_size" in r.stderr and "Traceback" not in r.stderr
    r = run(f"data.shards={echolab_shards}", "model.scale=huge", f"run_dir={tmp_path / 'r3'}")
    assert r.returncode == 2 and "huge" in r.stderr
    r = run(f"data.shards={echolab_shards}", "optim.learning_rate=1", f"run_dir={tmp_path / 'r4'}")
    assert r.returncode == 2 and "optim.learning_rate" in r.stderr and "valid keys here: lr," in r.stderr


def _wait_for_step(run: Path, p: subprocess.Popen, at_least: int, log: Path) -> int:
    deadline = time.time() + 240
    while max(losses(run), default=0) < at_least:
        assert p.poll() is None, f"the run ended before step {at_least}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.01)
    return max(losses(run))


def test_train_sigterm_saves_after_the_step_exits_75_and_resumes_exactly(reference_run, echolab_shards, tmp_path):
    """A real SIGTERM mid-run: the step finishes, a resume checkpoint appears (between the
    periodic ones), the exit code asks for a requeue, and the rerun continues the same losses."""
    from echo_nemo.preempt import EXIT_REQUEUE

    run = tmp_path / "preempted"
    args = overrides(echolab_shards, run)
    log = tmp_path / "first.log"
    p = _popen_pretrain(args, log)
    signalled_after = _wait_for_step(run, p, 10, log)
    p.send_signal(signal.SIGTERM)  # the process itself, as SLURM signals each task
    assert p.wait(timeout=120) == EXIT_REQUEUE, log.read_text()[-3000:]
    out = log.read_text()
    assert "caught SIGTERM" in out and "[checkpoint] saved" in out
    stopped = read_meta(latest_checkpoint(run))["step"]
    # at most the step in flight was finished: nothing after it, and nothing lost
    assert signalled_after <= stopped <= signalled_after + 1 and stopped < STEPS, (signalled_after, stopped)
    assert max(losses(run)) == stopped
    assert stopped in [s for s, _ in complete_checkpoints(run)]

    _resume_equals_reference(cli, args, stopped, run, reference_run)
    # the resume checkpoint was pruned like a periodic one; the kept step 8 stayed
    assert [s for s, _ in complete_checkpoints(run)] == [8, 32, 40]


@pytest.mark.slow  # 2-rank pretrainings; tests/test_distributed.py checks TP=2 == TP=1 by default
def test_train_usr1_to_one_rank_stops_every_rank_at_the_same_step(tp2_run, echolab_shards, tmp_path):
    """Two ranks (TP=2) started as srun starts them; USR1 reaches only rank 1: both agree
    (all-reduce) to stop after the same step, save one checkpoint, exit 75; the resumed
    run matches the uninterrupted TP=2 run."""
    from echo_nemo.preempt import EXIT_REQUEUE

    run = tmp_path / "tp2_preempted"
    args = overrides(echolab_shards, run, "parallel.tp=2")
    port = free_port()
    procs, logs = [], []
    for rank in range(2):
        logs.append(tmp_path / f"rank{rank}.log")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "echo_nemo.cli", "pretrain", RECIPE, *args], cwd=REPO,
                                      stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT, env=env))
    try:
        signalled_after = _wait_for_step(run, procs[0], 10, logs[0])
        procs[1].send_signal(signal.SIGUSR1)
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [EXIT_REQUEUE, EXIT_REQUEUE], [lg.read_text()[-2000:] for lg in logs]
    assert "caught SIGUSR1" in logs[1].read_text() and "caught SIGUSR1" not in logs[0].read_text()
    stopped = read_meta(latest_checkpoint(run))["step"]
    assert signalled_after <= stopped < STEPS and max(losses(run)) == stopped
    assert read_meta(latest_checkpoint(run))["layout"]["world_size"] == 2  # both ranks wrote their part

    r = cli("pretrain", RECIPE, *args, nproc=2)
    assert f"steps {stopped}->{STEPS}" in r.stdout
    ref, got = losses(tp2_run), losses(run)
    assert sorted(got) == sorted(ref)
    for s in ref:
        assert abs(got[s] - ref[s]) <= 1e-6, (s, got[s], ref[s])
