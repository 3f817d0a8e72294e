"""`echo-nemo sweep status DIR`: the state of every point of a sweep, with its log.

States: done (the run dir holds the `.sweep_done` marker), pending, running, failed,
not submitted, unknown (the scheduler no longer knows the job and it left no result).
SLURM states come from `sacct` through submitit's watcher (on the local test cluster a
shim answers from `squeue -t all`).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.core.utils import JobPaths

from echo_nemo.errors import UserError

# The sweep directory's layout (written by submit.py, read here): a run dir holding the
# marker is finished; submitit keeps its job pickles and logs under LOG_DIR.
DONE_MARKER = ".sweep_done"
LOG_DIR = "logs"

PENDING = {
    "PENDING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "RESV_DEL_HOLD",
    "SUSPENDED",
}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"}


@dataclass
class PointState:
    name: str
    state: str
    job_id: str | None
    run_dir: str
    log: str | None
    detail: str = ""


def _latest_jobs(sweep_dir: Path) -> dict[str, dict]:
    jobs: dict[str, dict] = {}
    path = sweep_dir / "jobs.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            jobs[row["point"]] = row
    return jobs


def _result(paths) -> tuple[str, str] | None:
    """('success'|'error', text) from submitit's result pickle, if the job wrote one."""
    if not paths.result_pickle.is_file():
        return None
    try:
        with open(paths.result_pickle, "rb") as f:
            outcome, value = pickle.load(f)
    except Exception as e:  # a torn pickle: the job died while writing it
        return "error", f"unreadable result: {e}"
    text = str(value).strip().splitlines()
    return outcome, text[-1] if text else ""


def _scheduler_state(cluster: str, job_id: str, folder: Path) -> str:
    if cluster == "slurm":
        return submitit.SlurmJob(folder=folder, job_id=job_id).state.split()[0].rstrip("+")
    if cluster == "local":  # the local executor's job id is the pid of its process
        try:
            os.kill(int(job_id), 0)
            return "RUNNING"
        except (OSError, ValueError):
            return "UNKNOWN"
    if cluster == "debug":  # ran inside the submitting command: not done means it failed
        return "FAILED"
    return "UNKNOWN"


def is_done(run_dir: Path) -> bool:
    return (run_dir / DONE_MARKER).is_file()


def sweep_status(sweep_dir: str | os.PathLike) -> list[PointState]:
    sweep_dir = Path(sweep_dir)
    points_file = sweep_dir / "points.json"
    if not points_file.is_file():
        raise UserError(f"{str(sweep_dir)!r} is not a sweep directory (no points.json in it)")
    try:
        points = json.loads(points_file.read_text())["points"]
    except (json.JSONDecodeError, KeyError) as e:
        raise UserError(f"{points_file}: not a valid sweep points file ({e})") from None
    jobs = _latest_jobs(sweep_dir)
    folder = sweep_dir / LOG_DIR / "%j"
    out = []
    for p in points:
        run_dir = Path(p["run_dir"])
        job = jobs.get(p["name"])
        job_id = job["job_id"] if job else None
        paths = JobPaths(folder, job_id=job_id) if job_id else None
        log = str(paths.stdout) if paths else None
        st = PointState(p["name"], "not submitted", job_id, str(run_dir), log)
        if is_done(run_dir):
            st.state = "done"
        elif job is not None:
            result = _result(paths)
            if result is not None:
                st.state, st.detail = (
                    ("failed", result[1]) if result[0] == "error" else ("failed", "no done marker")
                )
            else:
                sched = _scheduler_state(job["cluster"], job_id, folder)
                if sched in PENDING:
                    st.state = "pending"
                elif sched in RUNNING:
                    st.state = "running"
                elif sched == "UNKNOWN":
                    st.state = "unknown"
                else:  # FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, COMPLETED w/o marker
                    st.state, st.detail = "failed", sched
        out.append(st)
    return out


def format_status(states: list[PointState]) -> str:
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines = ["  ".join(f"{k}: {v}" for k, v in sorted(counts.items()))]
    width = max((len(s.name) for s in states), default=4)
    for s in states:
        extra = f"  ({s.detail})" if s.detail else ""
        lines.append(
            f"{s.name:{width}s}  {s.state:13s}  job {s.job_id or '-':12s}  log {s.log or '-'}{extra}"
        )
    return "\n".join(lines)
