"""Submit a sweep's points through submitit: one SLURM job array, or local/debug runs.

Layout of a sweep directory (`out_dir/name`):

    sweep.yaml       the resolved sweep config
    profile.yaml     the resolved cluster profile (resources of every point)
    points.json      every point: name, grid values, overrides, run dir
    jobs.jsonl       one line per submission: point, job id, cluster, time
    logs/            submitit's folder (job pickles, stdout/stderr per job)
    <point name>/    the point's run directory (config.yaml, metrics.jsonl, checkpoints/...)

Every point is a `PointJob`: it runs `echo-nemo <command> <recipe> <overrides>
<run_dir_key>=<run dir>` in-process (the same code as a local run) on every task of the
job; the command auto-resumes from the latest checkpoint of its run dir, so a job that
SLURM requeues (preemption, timeout, `scontrol requeue`) continues where it was. When
the command succeeds, rank 0 writes `.sweep_done` into the run dir; a point with that
marker is never submitted or run again.

Preemption: submitit's warning signal (USR2, 90 s before the time limit) and USR1
(`scancel --signal=USR1 JOB`) reach every task; the command finishes its step, saves a
resume checkpoint and returns 75 (echo_nemo.preempt), and rank 0 then runs submitit's
own checkpoint-and-requeue handler, which resubmits this same PointJob.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from omegaconf import OmegaConf
from submitit.core.utils import FailedJobError, FailedSubmissionError
from submitit.slurm.slurm import _make_sbatch_string

from echo_nemo import preempt
from echo_nemo.cli import main as cli_main
from echo_nemo.config import REPO_ROOT, compose, load_recipe, schema_for_recipe, to_yaml
from echo_nemo.errors import UserError
from echo_nemo.launch.config import (
    CLUSTERS,
    ClusterProfile,
    SweepConfig,
    load_profile,
    resolve_path,
)
from echo_nemo.launch.grid import Point, expand
from echo_nemo.launch.status import DONE_MARKER, LOG_DIR, is_done, sweep_status

WALL_LOG = ".sweep_stopped_wall_s"  # JSON list: wall seconds of each sitting that stopped to resume


@dataclass
class SweepPlan:
    cfg: SweepConfig
    profile: ClusterProfile
    sweep_dir: Path
    recipe: Path
    points: list[Point]

    def run_dir(self, point: Point) -> Path:
        return self.sweep_dir / point.name

    def argv(self, point: Point) -> list[str]:
        return [
            self.cfg.command,
            str(self.recipe),
            *point.overrides,
            f"{self.cfg.run_dir_key}={self.run_dir(point)}",
        ]


def plan_sweep(
    recipe: str | os.PathLike,
    overrides: list[str] | None = None,
    profile: str | None = None,
    validate: bool = True,
) -> SweepPlan:
    """Load a sweep recipe and expand its points (writes nothing)."""
    cfg = load_recipe(SweepConfig, recipe, overrides)
    prof = load_profile(profile or cfg.profile, cfg.resources)
    base = resolve_path(cfg.recipe)
    if not base.is_file():
        raise UserError(
            f"sweep recipe {str(recipe)!r}: base recipe {cfg.recipe!r} not found (looked for {base})"
        )
    sweep_dir = resolve_path(cfg.out_dir, Path.cwd()) / cfg.name
    plan = SweepPlan(cfg, prof, sweep_dir.resolve(), base.resolve(), expand(cfg))
    if validate:
        validate_points(plan)
    return plan


def validate_points(plan: SweepPlan) -> None:
    """Load every point's config with the command's own schema: a typo in a grid key
    fails here, before 90 jobs are queued.

    The base recipe is composed once and each point's overrides merged onto it; a point
    that fails is reloaded through `load_recipe` for its error message.
    """
    schema = schema_for_recipe(plan.recipe)
    base = compose(schema, plan.recipe)
    for p in plan.points:
        overrides = p.overrides + [f"{plan.cfg.run_dir_key}={plan.run_dir(p)}"]
        try:
            obj = OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(overrides)))
            if callable(getattr(obj, "validate", None)):
                obj.validate()
            continue
        except Exception:
            pass
        try:
            load_recipe(schema, plan.recipe, overrides)
        except UserError as e:
            raise UserError(f"sweep {plan.cfg.name!r}, point {p.name}: {e}") from None


def changed_since_done(run_dir: Path, argv: list[str], root: Path | None = None) -> tuple[list[str], list[str]] | None:
    """How `argv` differs from the command line that finished `run_dir`: (tokens it had,
    tokens it has now), or None when they agree or the marker holds no command line.

    A run is never redone once marked, so a recipe edited after the run finished would
    otherwise be reported with the old run's results. Paths are compared as `<run>` (the
    run's own folder) and `<root>` (the folder above it that holds the whole sweep or study):
    a run renamed within it, or the whole folder moved, still matches its command."""
    try:
        marker = json.loads((run_dir / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    old = marker.get("argv") if isinstance(marker, dict) else None
    if not isinstance(old, list):
        return None
    old_dir = str(marker.get("run_dir") or run_dir)  # older markers: where it lies now
    pairs_was, pairs_now = [(old_dir, "<run>")], [(str(run_dir), "<run>")]
    if root is not None:
        rel = str(run_dir.relative_to(root))
        old_root = old_dir[: -len(rel) - 1] if old_dir.endswith("/" + rel) else str(root)
        pairs_was.append((old_root, "<root>"))
        pairs_now.append((str(root), "<root>"))

    def settled(tokens: list, pairs: list[tuple[str, str]]) -> list[str]:
        out = []
        for t in map(str, tokens):
            for path, name in pairs:
                t = t.replace(path, name)
            out.append(t)
        return out

    was, now = settled(old, pairs_was), settled(argv, pairs_now)
    if was == now:
        return None
    return [t for t in was if t not in now], [t for t in now if t not in was]


# ----------------------------------------------------------------------------- the job
def _export_torchrun_env() -> None:
    """Outside SLURM (submitit's local executor) give multi-task jobs torchrun variables."""
    if "SLURM_PROCID" in os.environ or "RANK" in os.environ:
        return
    env = submitit.JobEnvironment()
    if env.num_tasks <= 1:
        return
    # every task derives the same port from the job id (str hashes differ per process)
    port = 20000 + zlib.crc32(str(env.job_id).split("_")[0].encode()) % 20000
    os.environ.update(
        RANK=str(env.global_rank),
        WORLD_SIZE=str(env.num_tasks),
        LOCAL_RANK=str(env.local_rank),
        # rank 0 runs on the first node of the allocation (multi-node jobs included)
        MASTER_ADDR=env.hostnames[0],
        MASTER_PORT=str(port),
    )


def _global_rank() -> int:
    for var in ("SLURM_PROCID", "RANK", "SUBMITIT_LOCAL_GLOBALID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def stopped_sittings(run_dir: Path) -> list[float]:
    """Wall seconds of the run's earlier sittings that stopped with a resume checkpoint."""
    path = run_dir / WALL_LOG
    return [float(x) for x in json.loads(path.read_text())] if path.is_file() else []


def record_stopped_sitting(run_dir: Path, seconds: float) -> None:
    """Add a sitting that stopped with a resume checkpoint (SIGTERM, USR1, the time limit's
    warning) to the run's wall-time log, so the finished run's wall_s counts it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (WALL_LOG + ".tmp")
    tmp.write_text(json.dumps([*stopped_sittings(run_dir), round(seconds, 1)]))
    tmp.replace(run_dir / WALL_LOG)  # atomic: a second stop never loses the first's seconds


class PointJob(submitit.helpers.Checkpointable):
    """One grid point: `echo-nemo ARGV` in-process, resuming from its run dir.

    `checkpoint()` (inherited) resubmits this same object when SLURM signals a timeout
    or preemption: the command's own checkpoints carry the progress, so nothing else
    needs saving here. The command catches the signal first (echo_nemo.preempt) so that
    it can save after its current step; `_after_stop` then hands over to submitit.
    """

    def __init__(self, argv: list[str], run_dir: str) -> None:
        self.argv = list(argv)
        self.run_dir = run_dir

    def __call__(self) -> str:
        run_dir = Path(self.run_dir)
        if is_done(run_dir):
            return f"already done: {run_dir}"
        if os.environ.get("SUBMITIT_EXECUTOR") == "local":
            _export_torchrun_env()
        print(f"[echo-nemo sweep] echo-nemo {shlex.join(self.argv)}", flush=True)
        t0 = time.perf_counter()
        rc = cli_main(self.argv)
        elapsed = time.perf_counter() - t0
        if rc == preempt.EXIT_REQUEUE:
            if _global_rank() == 0:
                record_stopped_sitting(run_dir, elapsed)
            self._after_stop()
        if rc != 0:
            raise RuntimeError(f"`echo-nemo {shlex.join(self.argv)}` exited with code {rc}")
        if _global_rank() == 0:
            marker = run_dir / DONE_MARKER
            marker.parent.mkdir(parents=True, exist_ok=True)
            # wall_s: the command's wall time over every sitting of the run, those that stopped
            # with a resume checkpoint and the one that finished it (the study sums them)
            earlier = stopped_sittings(run_dir)
            marker.write_text(json.dumps({"finished": time.time(), "wall_s": round(elapsed + sum(earlier), 1),
                                          "sittings": len(earlier) + 1, "argv": self.argv,
                                          "run_dir": self.run_dir}) + "\n")
        return str(run_dir)

    def _after_stop(self) -> None:
        """The command stopped on a signal with a resume checkpoint saved. USR1/USR2: rank 0
        runs submitit's preemption handler (pickles this job again, `scontrol requeue`s
        it, exits). SIGTERM: SLURM requeues a preempted job itself, and a cancelled one must
        stay cancelled. Every rank leaves without a result: the point is not done."""
        handler = signal.getsignal(preempt.submitit_signal())
        requeue = preempt.stopped_by() not in (None, "SIGTERM")
        if requeue and _global_rank() == 0:
            if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local") or not callable(handler):
                raise RuntimeError(f"`echo-nemo {shlex.join(self.argv)}` stopped on a signal after saving; "
                                   "run the sweep again to resume it")
            print("[echo-nemo sweep] stopped with a resume checkpoint: requeueing through submitit", flush=True)
            handler(preempt.submitit_signal(), None)  # submitit exits the process from here
        raise SystemExit(preempt.EXIT_REQUEUE)


# ----------------------------------------------------------------------------- executors
class _PreviewSlurmExecutor(submitit.SlurmExecutor):
    """Builds the sbatch script on a machine without SLURM (--dry-run): submitit's
    SlurmExecutor refuses to start where `srun` is not on PATH; this one submits nothing."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def make_executor(
    cluster: str, profile: ClusterProfile, folder: Path, job_name: str, preview: bool = False
) -> submitit.Executor:
    """The submitit executor of `cluster`, chosen explicitly (never auto-detected).

    `preview`: a SLURM executor that only renders its sbatch script (works without SLURM).
    """
    if cluster not in CLUSTERS:
        raise UserError(f"--cluster must be one of {', '.join(CLUSTERS)}, got {cluster!r}")
    if cluster == "debug":
        return submitit.DebugExecutor(folder=folder)
    if cluster == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=profile.max_requeues)
        ex.update_parameters(
            timeout_min=max(3, profile.timeout_min),
            nodes=1,
            tasks_per_node=profile.ntasks_per_node,
            gpus_per_node=profile.gpus_per_node,
        )
        return ex
    slurm = _PreviewSlurmExecutor if preview else submitit.SlurmExecutor
    ex = slurm(folder=folder, max_num_timeout=profile.max_requeues)
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": profile.nodes,
        "ntasks_per_node": profile.ntasks_per_node,
        # submitit signals USR2 90 s before the limit: under 3 minutes tasks die early.
        "time": max(3, profile.timeout_min),
        "array_parallelism": profile.array_parallelism,
        "setup": list(profile.setup),
        "additional_parameters": {"requeue": True, **dict(profile.additional)},
    }
    optional = {
        "partition": profile.partition,
        "account": profile.account,
        "qos": profile.qos,
        "gpus_per_node": profile.gpus_per_node or None,
        "cpus_per_task": profile.cpus_per_task,
        "mem": f"{profile.mem_gb:g}GB" if profile.mem_gb else None,
        "constraint": profile.constraint,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    ex.update_parameters(**params)
    return ex


def sbatch_script(plan: SweepPlan, n_points: int) -> str:
    """The sbatch script submitit would submit for `n_points` points (for --dry-run)."""
    ex = make_executor(
        "slurm", plan.profile, plan.sweep_dir / LOG_DIR / "%j", f"echo-{plan.cfg.name}", preview=True
    )
    return _make_sbatch_string(
        command=ex._submitit_command_str,
        folder=ex.folder,
        map_count=n_points if n_points > 1 else None,
        **ex.parameters,
    )


# ----------------------------------------------------------------------------- submission
def write_plan(plan: SweepPlan) -> None:
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    (plan.sweep_dir / "sweep.yaml").write_text(to_yaml(plan.cfg))
    (plan.sweep_dir / "profile.yaml").write_text(to_yaml(plan.profile))
    rows = [
        {**p.to_dict(), "run_dir": str(plan.run_dir(p)), "argv": plan.argv(p)} for p in plan.points
    ]
    tmp = plan.sweep_dir / "points.json.tmp"
    tmp.write_text(
        json.dumps({"name": plan.cfg.name, "command": plan.cfg.command, "points": rows}, indent=1)
    )
    os.replace(tmp, plan.sweep_dir / "points.json")


def _record(plan: SweepPlan, cluster: str, point: Point, job: submitit.Job) -> None:
    row = {
        "point": point.name,
        "job_id": str(job.job_id),
        "cluster": cluster,
        "submitted": time.time(),
    }
    with open(plan.sweep_dir / "jobs.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def points_to_submit(plan: SweepPlan) -> tuple[list[Point], dict[str, str]]:
    """Points not done and not already pending/running; with the reason for the others."""
    skipped: dict[str, str] = {}
    if (plan.sweep_dir / "points.json").is_file():
        for st in sweep_status(plan.sweep_dir):
            if st.state in ("done", "pending", "running"):
                skipped[st.name] = st.state
    for p in plan.points:  # the marker is the truth for done, whatever the job records say
        if is_done(plan.run_dir(p)):
            changed = changed_since_done(plan.run_dir(p), plan.argv(p), plan.sweep_dir)
            skipped[p.name] = "done" if changed is None else (
                f"done (with {' '.join(changed[0]) or 'nothing else'}; the recipe now gives "
                f"{' '.join(changed[1]) or 'nothing else'}: move its folder away to rerun it)")
    return [p for p in plan.points if p.name not in skipped], skipped


def submit_sweep(plan: SweepPlan, cluster: str) -> list[tuple[Point, submitit.Job]]:
    """Submit every point still to run; returns (point, job) pairs (not waited on)."""
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError(
            "--cluster slurm needs `sbatch` on PATH (a SLURM login node, or "
            "slurm/local_cluster.sh start); use --cluster local to run on this machine"
        )
    todo, _ = points_to_submit(plan)
    write_plan(plan)
    folder = plan.sweep_dir / LOG_DIR / "%j"
    ex = make_executor(cluster, plan.profile, folder, f"echo-{plan.cfg.name}")
    jobs: list[tuple[Point, submitit.Job]] = []
    if not todo:
        return jobs
    fns = [PointJob(plan.argv(p), str(plan.run_dir(p))) for p in todo]
    if cluster == "slurm":
        try:
            with ex.batch():  # one job array
                submitted = [ex.submit(fn) for fn in fns]
        except (FailedJobError, FailedSubmissionError) as e:
            # e.g. sbatch installed but no controller answering
            raise UserError(
                f"sbatch refused the sweep {plan.cfg.name!r}: {str(e).strip().splitlines()[-1]} "
                "(is a SLURM controller reachable? SLURM_CONF, or slurm/local_cluster.sh start; "
                "--cluster local runs on this machine)"
            ) from None
        jobs = list(zip(todo, submitted))
    elif cluster == "local":
        # One machine: run `array_parallelism` points at a time.
        width = plan.profile.array_parallelism
        for start in range(0, len(todo), width):
            wave = [
                (p, ex.submit(fn))
                for p, fn in zip(todo[start : start + width], fns[start : start + width])
            ]
            for p, job in wave:
                _record(plan, cluster, p, job)
            for _, job in wave:
                job.wait()
            jobs.extend(wave)
        return jobs
    else:
        jobs = [(p, ex.submit(fn)) for p, fn in zip(todo, fns)]
    for p, job in jobs:
        _record(plan, cluster, p, job)
    return jobs


def wait_for(jobs: list[tuple[Point, submitit.Job]], poll_s: float = 2.0) -> dict[str, str]:
    """Wait for every job; point name -> 'done' or 'failed: <reason>'."""
    outcome: dict[str, str] = {}
    for point, job in jobs:
        try:
            job.result()
            outcome[point.name] = "done"
        except Exception as e:  # the job's traceback is in its log
            outcome[point.name] = (
                f"failed: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"
            )
    return outcome


def describe(plan: SweepPlan, cluster: str, todo: list[Point], skipped: dict[str, str]) -> str:
    """Human-readable plan: resources, then one line per point."""
    prof = plan.profile
    lines = [
        f"sweep {plan.cfg.name}: {len(plan.points)} points, {len(todo)} to submit "
        f"({cluster}), command `echo-nemo {plan.cfg.command} {plan.recipe.relative_to(REPO_ROOT) if plan.recipe.is_relative_to(REPO_ROOT) else plan.recipe}`",
        f"resources per point: nodes={prof.nodes} gpus_per_node={prof.gpus_per_node} "
        f"tasks_per_node={prof.ntasks_per_node} world_size={prof.world_size} time={prof.time} "
        f"partition={prof.partition} account={prof.account} qos={prof.qos}",
        f"sweep dir: {plan.sweep_dir}",
    ]
    for p in plan.points:
        state = skipped.get(p.name, "submit")
        lines.append(f"  [{p.index:3d}] {state:8s} {p.name}  {' '.join(p.overrides)}")
    return "\n".join(lines)
