"""Sweeps on a real local SLURM cluster (marker `slurm`): multi-task TP, sweeps, requeue."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweep_helpers import REPO, pretrain_overrides

from echo_nemo.launch.config import ClusterProfile
from echo_nemo.launch.submit import make_executor
from echo_nemo.metrics import read_metrics

# The two-task TP check runs in the default suite (one short job through sbatch and srun);
# the sweeps and requeues, each a pretraining or RL run under the scheduler, are `slow`.
pytestmark = pytest.mark.slurm


def test_two_task_job_runs_tp2_forward_equal_to_tp1(slurm_cluster, tmp_path):
    """One job, 2 tasks under srun: torch.distributed from the SLURM env, TP=2 == TP=1."""
    from echo_nemo.launch.checks import tp_forward_check

    profile = ClusterProfile(partition="debug", tasks_per_node=2, time="00:05:00")
    ex = make_executor("slurm", profile, tmp_path / "%j", "tp2-check")
    job = ex.submit(tp_forward_check, 2)
    results = job.results()
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert {r["world_size"] for r in results} == {2}
    assert {r["local_rank"] for r in results} == {0, 1}
    for r in results:
        assert r["max_abs_diff"] < 1e-5, r
        assert abs(r["loss_tp"] - r["loss_tp1"]) < 1e-5
    # the scheduler reports the job as completed (answered through the sacct shim)
    assert wait_state(job.job_id, "COMPLETED")


def wait_state(job_id: str, state: str, timeout_s: float = 30) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        out = subprocess.run(["sacct", "-j", str(job_id)], capture_output=True, text=True).stdout
        if f"{job_id}|{state}" in out:
            return True
        if any(f"{job_id}|{bad}" in out for bad in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")):
            return False
        time.sleep(0.5)
    return False


def _write_sweep(tmp_path: Path, name: str, grid: str, overrides: list[str]) -> Path:
    recipe = tmp_path / "recipes" / "sweeps" / f"{name}.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(
        f"""name: {name}
command: pretrain
recipe: {REPO / "recipes" / "pretrain" / "quickstart_smoke.yaml"}
grid: {grid}
overrides: {json.dumps(overrides)}
out_dir: {tmp_path / "sweeps"}
profile: local
resources: {{time: "00:05:00", array_parallelism: 2}}
"""
    )
    return recipe


@pytest.mark.slow
def test_two_point_pretrain_sweep_completes_and_is_never_rerun(
    slurm_cluster, tiny_shards, tmp_path, cli
):
    recipe = _write_sweep(
        tmp_path, "two", "{train.seed: [1, 2]}", pretrain_overrides(tiny_shards, steps=3)
    )
    r = cli("sweep", recipe, "--cluster", "slurm", "--wait", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sweep_dir = tmp_path / "sweeps" / "two"
    runs = [sweep_dir / "train.seed-1", sweep_dir / "train.seed-2"]
    for run in runs:
        rows = read_metrics(run)
        assert [row["step"] for row in rows] == [1, 2, 3], run
        assert all(math.isfinite(row["loss"]) for row in rows)
        assert (run / ".sweep_done").is_file()
    # different seeds really ran different points
    assert read_metrics(runs[0])[0]["loss"] != read_metrics(runs[1])[0]["loss"]
    jobs = [json.loads(line) for line in (sweep_dir / "jobs.jsonl").read_text().splitlines()]
    assert len(jobs) == 2 and {j["job_id"].split("_")[0] for j in jobs} == {
        jobs[0]["job_id"].split("_")[0]
    }

    status = cli("sweep", "status", sweep_dir)
    assert status.returncode == 0
    assert "done: 2" in status.stdout
    for j in jobs:  # each point's log path is shown and exists
        line = next(x for x in status.stdout.splitlines() if x.startswith(j["point"]))
        log = Path(line.split(" log ")[1].split()[0])
        assert log.is_file() and "[echo-nemo sweep]" in log.read_text()

    again = cli("sweep", recipe, "--cluster", "slurm")
    assert again.returncode == 0
    assert "0 to submit" in again.stdout and again.stdout.count(" done ") == 2
    assert len((sweep_dir / "jobs.jsonl").read_text().splitlines()) == 2  # nothing resubmitted


@pytest.mark.slow
def test_requeued_job_resumes_from_its_checkpoint(slurm_cluster, tiny_shards, tmp_path):
    from echo_nemo.checkpoint import latest_checkpoint
    from echo_nemo.launch.status import sweep_status
    from echo_nemo.launch.submit import plan_sweep, submit_sweep, wait_for

    # srun lets the step run ~5 s after `scontrol requeue` before killing it: the run
    # must still be going by then, or it finishes before the requeue takes effect.
    # On an idle machine a debug step takes ~10 ms and a save ~0.4 s: 1000 steps saved
    # every 100 leave well over KillWait + the requeue delay after the first checkpoint.
    steps = 1000
    recipe = _write_sweep(
        tmp_path,
        "requeue",
        "{train.seed: [3]}",
        pretrain_overrides(tiny_shards, steps=steps, every=100),
    )
    plan = plan_sweep(recipe)
    [(point, job)] = submit_sweep(plan, "slurm")
    run_dir = plan.run_dir(point)
    deadline = time.time() + 240
    while latest_checkpoint(run_dir) is None:
        assert time.time() < deadline, "no checkpoint appeared"
        assert job.state in ("PENDING", "RUNNING", "UNKNOWN"), job.state
        time.sleep(0.3)
    saved = int(latest_checkpoint(run_dir).name.split("_")[1])
    assert saved < steps, "the run finished before it could be requeued: make it longer"
    assert sweep_status(plan.sweep_dir)[0].state == "running"
    subprocess.run(["scontrol", "requeue", str(job.job_id)], check=True, capture_output=True)
    assert wait_for([(point, job)]) == {point.name: "done"}

    log = job.paths.stdout.read_text()
    starts = [int(a) for a, _ in re.findall(r"steps (\d+)->(\d+)", log)]
    assert len(starts) == 2, log[-3000:]  # ran, was requeued, ran again
    assert starts[0] == 0 and starts[1] >= saved > 0  # the second run resumed, not restarted
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == list(range(1, steps + 1))
    assert latest_checkpoint(run_dir).name == f"step_{steps}"


@pytest.mark.slow
def test_plain_sbatch_template_runs_pretraining_under_srun(slurm_cluster, tiny_shards, tmp_path):
    """slurm/pretrain.sbatch without submitit: the recipe and overrides reach
    `echo-nemo pretrain` under srun and the run completes as 2 tasks at TP=2."""
    run_dir = tmp_path / "run"
    overrides = [*pretrain_overrides(tiny_shards, steps=2), f"run_dir={run_dir}", "parallel.tp=2"]
    # the batch script finds `python` on PATH, as for a user with the venv activated
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(
        [
            "sbatch",
            "--parsable",
            # the template asks for 8 GPUs per node and 48 h; this CPU cluster has neither
            "--gpus-per-node=0",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
            "--time=5",
            "--signal=B:USR1@30",
            f"--output={tmp_path}/slurm-%j.out",
            str(REPO / "slurm" / "pretrain.sbatch"),
            str(REPO / "recipes" / "pretrain" / "quickstart_smoke.yaml"),
            *overrides,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=env,
    )
    job_id = r.stdout.strip().split(";")[0]
    assert wait_state(job_id, "COMPLETED", timeout_s=240), (
        tmp_path / f"slurm-{job_id}.out"
    ).read_text()[-3000:]
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert "tp=2 dp=1" in log and "steps 0->2" in log
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2]


def _wait_for_steps(run_dir: Path, n: int, log: Path | None = None, timeout_s: float = 300) -> int:
    deadline = time.time() + timeout_s
    while len(read_metrics(run_dir)) < n:
        assert time.time() < deadline, f"no step {n} in {run_dir}: " + (log.read_text()[-3000:] if log and log.exists() else "")
        time.sleep(0.2)
    return len(read_metrics(run_dir))


@pytest.mark.slow
def test_sbatch_usr1_saves_requeues_and_resumes_exactly(slurm_cluster, tiny_shards, tmp_path, cli):
    """slurm/pretrain.sbatch at TP=2 (2 tasks): USR1 to the batch shell only (what
    `--signal=B:USR1@300` sends near the time limit); its trap forwards it through srun to
    both ranks, they save after the same step and exit 75, the script requeues the job, and
    the requeued run resumes with the losses of an uninterrupted run."""
    steps = 150
    overrides = [*pretrain_overrides(tiny_shards, steps=steps), "parallel.tp=2"]
    recipe = str(REPO / "recipes" / "pretrain" / "quickstart_smoke.yaml")
    ref = tmp_path / "ref"
    r = cli("pretrain", recipe, *overrides, f"run_dir={ref}", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "run"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(
        ["sbatch", "--parsable", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10",
         f"--output={tmp_path}/slurm-%j.out", str(REPO / "slurm" / "pretrain.sbatch"), recipe, *overrides,
         f"run_dir={run_dir}"],
        capture_output=True, text=True, check=True, cwd=REPO, env=env,
    )
    job_id = r.stdout.strip().split(";")[0]
    log = tmp_path / f"slurm-{job_id}.out"
    _wait_for_steps(run_dir, 5, log)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, capture_output=True)
    assert wait_state(job_id, "COMPLETED", timeout_s=400), log.read_text()[-3000:]
    text = log.read_text()
    assert "USR1: the tasks save after their current step" in text and f"requeueing {job_id}" in text
    starts = [int(a) for a, _ in re.findall(r"steps (\d+)->(\d+)", text)]
    assert len(starts) == 2 and starts[0] == 0 and 5 <= starts[1] < steps, text[-3000:]
    assert text.count("caught SIGUSR1") == 2  # both ranks got it
    ref_loss = {row["step"]: row["loss"] for row in read_metrics(ref)}
    got = {row["step"]: row["loss"] for row in read_metrics(run_dir)}
    assert sorted(got) == list(range(1, steps + 1))
    for s in ref_loss:
        assert abs(got[s] - ref_loss[s]) <= 1e-6, (s, got[s], ref_loss[s])


@pytest.mark.slow
def test_sweep_rl_point_usr1_requeues_through_submitit_and_resumes(slurm_cluster, tmp_path):
    """`scancel --signal=USR1` to a sweep's RL job (every task): the run saves after its
    step, PointJob hands over to submitit, which requeues the same job; it resumes and
    finishes, and the point is marked done."""
    from echo_nemo.launch.submit import plan_sweep, submit_sweep, wait_for

    steps = 150  # debug scale runs ~15 steps/s: enough that the signal lands mid-loop
    args = ["model.init=null", "model.scale=debug", f"steps={steps}", "rollout.prompts_per_step=2",
            "rollout.samples_per_prompt=4", "rollout.max_new_tokens=10", "data.eval_limit=2",
            "eval_max_new_tokens=10", "num_checkpoints=2", "checkpoint.every=0", "reward.in_process=true"]
    recipe = tmp_path / "recipes" / "sweeps" / "rl_usr1.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(f"""name: rl_usr1
command: rl
recipe: {REPO / "recipes" / "rl" / "grpo_echolab_tiny.yaml"}
grid: {{seed: [7]}}
overrides: {json.dumps(args)}
out_dir: {tmp_path / "sweeps"}
profile: local
resources: {{time: "00:10:00"}}
""")
    plan = plan_sweep(recipe)
    [(point, job)] = submit_sweep(plan, "slurm")
    run_dir = plan.run_dir(point)
    _wait_for_steps(run_dir, 2)
    subprocess.run(["scancel", "--signal=USR1", str(job.job_id)], check=True, capture_output=True)
    assert wait_for([(point, job)]) == {point.name: "done"}, job.paths.stdout.read_text()[-3000:]
    out = job.paths.stdout.read_text() + job.paths.stderr.read_text()
    assert "requeueing through submitit" in out
    assert [row["step"] for row in read_metrics(run_dir)] == list(range(0, steps + 1))  # 0: eval before
    # the run's wall time counts both sittings: the one stopped by USR1 and the one that finished
    [first] = json.loads((run_dir / ".sweep_stopped_wall_s").read_text())
    marker = json.loads((run_dir / ".sweep_done").read_text())
    assert marker["sittings"] == 2 and marker["wall_s"] > first > 0
