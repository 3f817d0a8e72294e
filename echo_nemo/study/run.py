"""Run a planned study through the sweep machinery (echo_nemo.launch.submit), stage by stage.

    for stage in data, pretrain, rl, eval:
        skip runs already done (their `.sweep_done` marker) and runs whose input failed
        submit the rest, longest first (one submitit executor per stage: its profile and
        resources; locally a pool of the stage's array_parallelism slots sharing the cores)
        wait for each, printing progress: runs done / total, elapsed, ETA
    write the report (echo_nemo.study.report)

A stage starts when the one before it has finished (a barrier; simple and right on one
machine, and on SLURM it costs only the queue wait between stages). Every run is
`launch.submit.PointJob`, so a finished run is never redone and an interrupted study
continues where it stopped when run again (each command also resumes from its checkpoints).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from submitit.core.utils import FailedJobError, FailedSubmissionError

from echo_nemo.cpu.threads import write_share
from echo_nemo.env import THREADS_FILE
from echo_nemo.errors import UserError
from echo_nemo.launch.config import ClusterProfile, load_profile
from echo_nemo.launch.submit import LOG_DIR, PointJob, is_done, make_executor
from echo_nemo.study.config import STAGES
from echo_nemo.study.plan import StudyPlan, StudyRun
from echo_nemo.study.report import SHARING_FILE, build_study_report

POLL_S = 2.0  # how often a local pool looks for a finished run


def eta_seconds(remaining_est_min: float, done_est_min: float, done_actual_s: float) -> float:
    """Seconds left: the recipe's estimate of the remaining runs, scaled by how fast the runs
    finished so far went against their own estimate:

        eta = remaining_est * 60 * (done_actual_s / (done_est * 60))   (no run done yet: ratio 1)
    """
    ratio = done_actual_s / (done_est_min * 60) if done_est_min > 0 and done_actual_s > 0 else 1.0
    return remaining_est_min * 60 * ratio


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@dataclass
class Progress:
    """Runs done / total and an ETA, printed after every finished run."""

    plan: StudyPlan
    done: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    done_est_min: float = 0.0  # estimates of the runs finished in this invocation
    done_actual_s: float = 0.0
    echo: Callable[[str], None] = print

    def estimate(self, run: StudyRun) -> float:
        return float(getattr(self.plan.cfg.budgets[self.plan.budget].minutes, run.stage)) * run.cost

    def line(self) -> str:
        total = len(self.plan.runs)
        left = [r for r in self.plan.runs if r.key not in self.done and r.key not in self.failed]
        eta = eta_seconds(sum(self.estimate(r) for r in left), self.done_est_min, self.done_actual_s)
        stages = " ".join(f"{s} {sum(r.key in self.done for r in self.plan.by_stage(s))}/{len(self.plan.by_stage(s))}"
                          for s in STAGES if self.plan.by_stage(s))
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return (f"[study] {len(self.done)}/{total} runs done{failed} ({stages}) · "
                f"elapsed {_clock(time.perf_counter() - self.started)} · ETA {_clock(eta)}")

    def finished(self, run: StudyRun, outcome: str, took_s: float, sharing: int = 1) -> None:
        """`sharing`: how many local runs shared the cores when this one started (itself
        included): it counts that share of its wall time towards the ETA's pace."""
        if outcome == "done":
            self.done.add(run.key)
            self.done_est_min += self.estimate(run)
            self.done_actual_s += took_s / sharing
        else:
            self.failed[run.key] = outcome
        self.echo(f"[study] {outcome:4s} {run.key} ({_clock(took_s)})" if outcome == "done"
                  else f"[study] FAILED {run.key}: {outcome}")
        self.echo(self.line())


def _outcome(job) -> str:
    try:
        job.result()
        return "done"
    except Exception as e:  # the run's traceback is in its log under logs/<stage>/
        text = str(e).strip()
        return f"failed: {text.splitlines()[-1] if text else type(e).__name__}"


def launch_order(runs: list[StudyRun]) -> list[StudyRun]:
    """Longest first (by `cost`; plan order among equals): a pool of slots then ends on
    short runs, not on one long run alone while the other slots idle. Runs that reuse other
    runs' results (evals over steps) go after all the others, so those are there to reuse."""
    return sorted(runs, key=lambda r: (bool(r.reuses), -r.cost))


def run_stage(plan: StudyPlan, stage: str, cluster: str, progress: Progress) -> None:
    """Submit the stage's runs still to do and wait for them (see the module docstring)."""
    todo = []
    for run in plan.by_stage(stage):
        if run.key in progress.done:
            continue
        blocked = [k for k in run.after if k not in progress.done]
        if blocked:
            progress.finished(run, f"skipped: needs {', '.join(blocked)}", 0.0)
            continue
        todo.append(run)
    if not todo:
        return
    profile = stage_profiles(plan)[stage]
    folder = plan.study_dir / LOG_DIR / stage / "%j"
    ex = make_executor(cluster, profile, folder, f"echo-{plan.cfg.name}-{stage}")
    jobs = [(r, PointJob(r.argv, str(r.run_dir))) for r in launch_order(todo)]
    progress.echo(f"[study] stage {stage}: {len(todo)} run(s) to do ({cluster})")
    if cluster == "slurm":  # one job array per stage; SLURM runs what fits
        t0 = time.perf_counter()
        try:
            with ex.batch():
                submitted = [(r, ex.submit(fn)) for r, fn in jobs]
        except (FailedJobError, FailedSubmissionError) as e:
            raise UserError(f"sbatch refused the study's {stage} stage: {str(e).strip().splitlines()[-1]} "
                            "(is a SLURM controller reachable? --cluster local runs on this machine)") from None
        for r, job in submitted:
            progress.finished(r, _outcome(job), time.perf_counter() - t0)
        return
    width = profile.array_parallelism if cluster == "local" else 1
    budget = plan.cfg.budgets[plan.budget]
    if cluster == "local" and budget.at_once:
        width = budget.at_once
    follow = cluster == "local" and width > 1 and budget.share_cores
    # a pool of `width` slots: the next run starts as soon as one finishes
    running: list[tuple[StudyRun, object, float, int]] = []
    while jobs or running:
        while jobs and len(running) < width:
            r, fn = jobs.pop(0)
            side_by_side = runs_side_by_side(width, len(running), len(jobs), follow)
            with _threads_per_run(side_by_side, _share_file(plan, r) if follow else None):
                running.append((r, ex.submit(fn), time.perf_counter(), max(1, side_by_side)))
            if follow:
                _share_cores(plan, [item[0] for item in running])
        finished = [item for item in running if item[1].done()] if width > 1 else running[:1]
        if not finished:
            time.sleep(POLL_S)
            continue
        for item in finished:
            r, job, t0, sharing = item
            running.remove(item)
            outcome = _outcome(job)
            if outcome == "done":  # the report's wall time from nothing counts wall_s / sharing
                (r.run_dir / SHARING_FILE).write_text(f"{sharing}\n")
            progress.finished(r, outcome, time.perf_counter() - t0, sharing=sharing)
        if follow:
            _share_cores(plan, [item[0] for item in running])


def runs_side_by_side(width: int, running: int, queued: int, share_cores: bool) -> int:
    """How many runs a run starting now shares the cores with, itself included (its threads:
    cores / that; 0 for a pool of one: the run's own setting). Without share_cores always
    the pool's width, whatever else is running: torch's numbers change with the thread
    count, so a run's must not depend on its neighbours' timing, a resume or `--only`. With
    it, speed first: a stage's last runs start with the cores the others left."""
    if width <= 1:
        return 0
    return min(width, running + 1 + queued) if share_cores else width


def _share_file(plan: StudyPlan, run: StudyRun) -> Path:
    return plan.study_dir / LOG_DIR / "threads" / run.key.replace("/", "__")


def _share_cores(plan: StudyPlan, running: list[StudyRun]) -> None:
    """Divide the cores among the local runs going now (the longest first gets any
    remainder); each follows its share file while it runs (echo_nemo.cpu.threads)."""
    if not running:
        return
    cores = os.cpu_count() or 1
    for i, r in enumerate(sorted(running, key=lambda r: -r.cost)):
        write_share(_share_file(plan, r), max(1, cores // len(running) + (i < cores % len(running))))


@contextlib.contextmanager
def _threads_per_run(at_once: int, share_file: Path | None = None):
    """While submitting `at_once` local runs together, give each an equal share of the cores
    (OMP_NUM_THREADS, which torch reads at start): several runs with all threads each would
    slow one another down many times over. `share_file`: where the run then reads its share
    as the runs side by side change ($ECHO_NEMO_THREADS_FILE)."""
    if at_once < 1:
        yield
        return
    threads = max(1, (os.cpu_count() or 1) // at_once)
    env = {"OMP_NUM_THREADS": str(threads)}
    if share_file is not None:
        write_share(share_file, threads)
        env[THREADS_FILE.name] = str(share_file)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def stage_profiles(plan: StudyPlan) -> dict[str, ClusterProfile]:
    """Each stage's cluster profile with the study's resources applied (default: local)."""
    out = {}
    for stage in STAGES:
        res = plan.cfg.stages.get(stage)
        out[stage] = load_profile(res.profile if res else "local", res.resources if res else None)
    return out


def run_study(plan: StudyPlan, cluster: str, echo: Callable[[str], None] = print) -> Progress:
    """Every stage in order, then the report; returns the progress record (done / failed)."""
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--cluster slurm needs `sbatch` on PATH (a SLURM login node, or slurm/local_cluster.sh "
                        "start); use --cluster local to run on this machine")

    progress = Progress(plan, done={r.key for r in plan.runs if is_done(r.run_dir)}, echo=echo)
    if progress.done:
        echo(f"[study] resuming: {len(progress.done)} run(s) already done are skipped")
    echo(progress.line())
    for stage in STAGES:
        run_stage(plan, stage, cluster, progress)
    index = build_study_report(plan.study_dir, plan.study_dir / "report")
    echo(f"[study] report: {index}")
    return progress

