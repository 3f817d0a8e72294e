"""Run model-written code away from the trainer, the server and the answer key.

Design: the caller (trainer, reward server) owns a `WorkerPool` of long-lived worker
processes (``python -I``) started with a scrubbed environment in their own empty
temporary directory. At start-up, before it reads any job, a worker forks two fork
servers (zygotes, zygote.py): a lean one with the standard modules model code may import
loaded, and a full one with numpy and sympy too. It then loads math-verify and serves
jobs one at a time in its main thread: it parses the completion, asks a zygote to fork a
child for the code (import-free code: the lean zygote, a cheaper fork), collects the
child's output within the limits, and compares it with the ground truth itself.

Invariant: model code runs only in a child forked from a zygote, which has never held a
ground truth, another item's completion or the server's state; the child receives only
its own program and returns only its output (see zygote.py). The worker that holds the
truth never forks model code, and a worker whose zygote dies is retired, never re-forked.

Layers in every child (which are in force: `WorkerPool.info()`, the server's start-up
line and ``/health``; Landlock and seccomp are checked by a probe child at start-up, the
namespace by looking at the interfaces left):
- Landlock (confine.py): reads only of the run dir, the Python installation and system
  libraries; writes only inside the run dir; no device, fifo or socket files; TCP
  bind/connect and signals outside the child denied (ABI >= 4 / 6).
- seccomp-bpf (confine.py): no processes or threads, exec, sockets, ptrace, mknod,
  namespaces, mounts, signals, IPC, io_uring; EPERM, or a kill for a foreign syscall ABI.
- Network namespace: the worker (and so every child) leaves the network when the
  platform allows (root or user namespaces); loopback down, no routes.
- uid/gid 65534 when started as root; rlimits: CPU time (then SIGKILL at the hard limit),
  address space, file size, open files, no core dumps, no processes.
- Wall time: the worker SIGKILLs the child; a child still runnable but starved of CPU by a
  busy machine gets up to 3x the wall limit, bounded by its CPU limit.
- A fresh empty run dir per execution, removed afterwards; scrubbed environment; stdin,
  stdout and stderr on /dev/null (prints captured in memory up to a cap).
- The audit hook: refuses file access outside the run dir, sockets, process creation,
  signals and ctypes/cffi with a readable "sandbox violation"; a completion that trips it
  gets reward 0 even if it caught the error. The OS layers above do not depend on it.
- A crash, kill or hang of a child costs only that completion (reward 0 with a reason);
  a dead or stuck worker is killed and replaced; the pool keeps serving.

``reward serve --strict`` refuses to start unless Landlock and seccomp both hold. A
kernel without them is reported once (start-up line, a warning) and the sandbox runs with
the layers it has.

Not guaranteed:
- Memory is bounded by address space, not resident memory; CPU by per-process time; the
  run dir's total size only by the file size limit times what the CPU limit lets the code
  write (it is removed after the run).
- The child reports its result over a pipe it owns, so model code can forge its own
  result message: this gains nothing beyond returning the value, except hiding a refused
  (and therefore harmless) audit-hook violation.
- A CPython memory-safety bug lets code reach raw memory and syscalls: the OS layers
  still hold, and the process holds no answer to find.
- It is not a defence against a malicious *caller*: the pool trusts its jobs' framing.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import json
import logging
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict

from echo_nemo import env
from echo_nemo.errors import UserError
from echo_nemo.reward import confine
from echo_nemo.reward.zygote import (
    BLOCKED_IMPORTS,
    NOBODY,
    PR_SET_PDEATHSIG,
    ChildSetup,
    Limits,
    Zygote,
    ZygoteDied,
)

__all__ = ["Limits", "WorkerPool", "execute", "register_pool", "LAYERS", "LAYERS_OFF_ENV"]

log = logging.getLogger(__name__)
CLONE_NEWNET = 0x40000000
# ECHO_NEMO_SANDBOX_NETNS=0 skips the network namespace (e.g. to test the fallback).
NETNS_ENV = env.SANDBOX_NETNS.name
# Test-only: a comma list of layers to leave off, to prove the others hold alone.
LAYERS_OFF_ENV = env.SANDBOX_LAYERS_OFF.name
LAYERS = ("landlock", "seccomp", "network_namespace", "audit_hook")
# The layers `reward serve --strict` requires: the filesystem and syscall fences.
REQUIRED_BY_STRICT = ("landlock", "seccomp")
# A child that is runnable but starved of CPU (state R on an oversubscribed machine) gets
# up to this multiple of its wall limit; a sleeping or blocked child is killed on time.
STARVED_GRACE = 3.0


# ---------------------------------------------------------------------------
# The worker process: trusted; holds the truths; runs jobs in its main thread
# ---------------------------------------------------------------------------

# Loaded by the worker before it forks its zygotes: the uid-65534 child cannot read a
# stdlib under /root, so modules it may need must already be loaded (socket too, so that a
# socket attempt meets the audit hook instead of an ImportError).
_PRELOAD = ("math", "cmath", "fractions", "decimal", "numbers", "itertools", "functools",
            "operator", "collections", "heapq", "bisect", "statistics", "random", "datetime",
            "calendar", "time", "string", "re", "json", "copy", "typing", "dataclasses", "enum",
            "textwrap", "encodings.idna")  # fmt: skip
# Only in the full zygote: numpy and sympy for model code, sqlite3 so that C-level file
# writers meet the OS layers rather than an ImportError in the attack tests.
_HEAVY = ("numpy", "sympy", "sqlite3")
_ZYGOTES: dict[str, Zygote] = {}  # "lean", "full"; set in a worker only
_RETIRE = False  # set when a zygote died: the worker answers, then exits


def _starved(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "R"
    except (OSError, IndexError):
        return False


def execute(job: dict, limits: Limits, base_dir: str) -> dict:
    """Run `job` in a child of one of this worker's zygotes; return its result dict.

    Called in a worker's main thread. The result has `value` (str | None) or `error`,
    plus `stdout` and `violations`. Code that contains no "import" goes to the lean
    zygote, the rest to the full one. The child's rlimits are the worker's `Limits`.
    """
    global _RETIRE
    code = job.get("program") or "".join(job.get("blocks") or ())
    zygote = _ZYGOTES["lean" if "import" not in code else "full"]
    try:
        return _run_child(zygote, job, limits, base_dir)
    except ZygoteDied as e:
        _RETIRE = True
        return {"error": f"sandbox unavailable: {e}", "fatal": True}


def _run_child(zygote: Zygote, job: dict, limits: Limits, base_dir: str) -> dict:
    workdir = tempfile.mkdtemp(prefix="run-", dir=base_dir)
    try:
        if os.getuid() == 0:
            os.chown(workdir, NOBODY, NOBODY)
        pid, result_fd = zygote.start(job, workdir)
        try:
            data, killed = _collect(pid, result_fd, limits)
        finally:
            os.close(result_fd)
        status = zygote.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _interpret(data, killed, status, limits)


def _collect(pid: int, fd: int, limits: Limits) -> tuple[bytes, str | None]:
    """Read the child's result until EOF; SIGKILL it past its wall limit or result cap."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:  # already exited and reaped: its output is in the pipe
        pidfd = None
    chunks, size, killed = [], 0, None
    start = time.monotonic()
    deadline = start + limits.wall_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 and _starved(pid) and time.monotonic() - start < STARVED_GRACE * limits.wall_s:
                deadline += 0.25  # runnable but not scheduled (a busy machine): its CPU limit holds
                continue
            if left <= 0:
                killed = f"timeout: wall time limit ({limits.wall_s:g} s) exceeded"
                break
            if not select.select([fd], [], [], left)[0]:
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            size += len(data)
            if size > (1 << 20) + 65536:
                killed = "result too large"
                break
            chunks.append(data)
    finally:
        if killed and pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if pidfd is not None:
            os.close(pidfd)
    return b"".join(chunks), killed


def _interpret(data: bytes, killed: str | None, status: int, limits: Limits) -> dict:
    """The child's result dict from its output and wait status (errors marked fatal)."""
    if killed:
        return {"error": killed, "fatal": True}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return {"error": f"cpu time limit ({limits.cpu_s} s) exceeded ({name})", "fatal": True}
        if sig == signal.SIGXFSZ:
            return {"error": f"file size limit ({limits.file_size_mb} MiB) exceeded", "fatal": True}
        return {"error": f"crashed: killed by {name}", "fatal": True}
    try:
        result = json.loads(data or b"null")
    except ValueError:
        result = None
    if not isinstance(result, dict):
        return {"error": "exited without a result", "fatal": True}
    if result.get("violations"):
        result["error"] = "sandbox violation: " + "; ".join(result["violations"])
        result["value"] = None
        result["fatal"] = True
    if isinstance(result.get("error"), str) and "MemoryError" in result["error"]:
        result["error"] = f"memory limit ({limits.memory_mb} MiB) exceeded: " + result["error"]
        result["fatal"] = True
    return result


def _only_loopback() -> bool:
    """True when this process sees no network interface but loopback."""
    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def _leave_network(libc: ctypes.CDLL, wanted: bool) -> dict:
    """Enter a new network namespace when allowed. It counts only when
    ``unshare(CLONE_NEWNET)`` succeeded and no interface but loopback is left (checked)."""
    if not wanted:
        netns, note = False, "disabled"
    elif libc.unshare(CLONE_NEWNET) != 0:
        netns, note = False, f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
    else:
        netns = _only_loopback()
        note = "new namespace, loopback only" if netns else "new namespace still shows interfaces"
    return {"network_namespace": netns, "network_namespace_note": note}


def _preload(names: tuple[str, ...]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _probe(zygote: Zygote, limits: Limits, base_dir: str) -> dict:
    result = _run_child(zygote, {"kind": "probe"}, limits, base_dir)
    return result.get("probe") or {"landlock": False, "seccomp": False, "error": result.get("error")}


def _start_zygotes(layers: dict, limits: Limits, base_dir: str, close_fds: tuple[int, ...]) -> dict:
    """Fork the lean and the full zygote (before any job), probe both; the protections."""
    plan = confine.plan(landlock=layers["landlock"], seccomp=layers["seccomp"])
    read_roots = confine.read_roots()
    blocked = tuple(n for n in sys.modules if n.split(".")[0] in BLOCKED_IMPORTS)
    _preload(_PRELOAD)
    setup = ChildSetup(limits, plan, layers["audit_hook"], read_roots, blocked)
    _ZYGOTES["lean"] = Zygote(setup, close_fds)
    _preload(_HEAVY)
    _ZYGOTES["full"] = Zygote(setup, close_fds + (_ZYGOTES["lean"].sock.fileno(),))
    probes = [_probe(z, limits, base_dir) for z in _ZYGOTES.values()]
    landlock = bool(plan.landlock_abi) and all(p.get("landlock") for p in probes)
    seccomp = plan.seccomp and all(p.get("seccomp") for p in probes)
    failed = lambda layer: f"; the probe found it not in force {probes}"  # noqa: E731
    return {
        "landlock": landlock,
        "landlock_abi": plan.landlock_abi,
        "landlock_note": plan.landlock_note + ("" if landlock or not plan.landlock_abi else failed("landlock")),
        "seccomp": seccomp,
        "seccomp_note": plan.seccomp_note + ("" if seccomp or not plan.seccomp else failed("seccomp")),
        "uid_drop": os.getuid() == 0,
        "rlimits": True,
        "audit_hook": layers["audit_hook"],
        "answer_isolation": "fork servers started before any job",
    }


def worker_main(handler: str, limits: Limits, layers: dict) -> None:
    """Read JSON jobs from stdin, answer JSON lines on the original stdout. `layers`: which
    of LAYERS to apply (all but test runs)."""
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # parent already gone
        os._exit(0)
    protections = _leave_network(libc, layers["network_namespace"])
    logging.disable(logging.WARNING)
    base_dir = os.getcwd()
    protections.update(_start_zygotes(layers, limits, base_dir, (proto_out.fileno(),)))
    _preload(("math_verify",))
    gc.collect()
    gc.freeze()
    module, func = handler.split(":")
    run = getattr(importlib.import_module(module), func)
    proto_out.write((json.dumps({"ready": True, "protections": protections}) + "\n").encode())
    for line in sys.stdin.buffer:
        job = json.loads(line)
        try:
            result = run(job, limits, base_dir)
        except Exception as e:  # a bug in trusted code: report it, keep serving
            result = {"error": f"worker error: {type(e).__name__}: {e}"}
        if _RETIRE:
            result["retire"] = True
        proto_out.write((json.dumps(result) + "\n").encode())
        if _RETIRE:
            os._exit(0)


# ---------------------------------------------------------------------------
# The pool: lives in the caller's process, runs no model code itself
# ---------------------------------------------------------------------------

class WorkerDied(RuntimeError):
    pass


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, handler: str, limits: Limits, start_timeout: float, layers: dict) -> None:
        self.base_dir = tempfile.mkdtemp(prefix="echo-nemo-sandbox-")
        os.chmod(self.base_dir, 0o711)  # the uid-65534 child must reach its run dir
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.base_dir,
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
        # -I: no PYTHON* variables, no user site, no cwd on sys.path; the package's own
        # location goes first so a source checkout works without an install.
        entry = (
            "import sys, json; sys.path.insert(0, sys.argv[3]); "
            "from echo_nemo.reward.sandbox import Limits, worker_main; "
            "worker_main(sys.argv[1], Limits(**json.loads(sys.argv[2])), json.loads(sys.argv[4]))"
        )
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        cmd = [sys.executable, "-I", "-c", entry, handler, json.dumps(asdict(limits)), package_root,
               json.dumps(layers)]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=self.base_dir, env=env,
            start_new_session=True,
        )  # fmt: skip
        self.jobs = 0
        self.buffer = b""
        try:
            self.info = self._read_line(start_timeout)
        except BaseException:
            self.kill()
            raise

    def _read_line(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"worker gave no answer within {timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 1 << 20)
                if not data:
                    raise WorkerDied(f"worker exited (code {self.proc.poll()})")
                self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def request(self, job: dict, timeout: float) -> dict:
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise WorkerDied(f"worker pipe closed: {e}") from e
        self.jobs += 1
        return self._read_line(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and any child it forked
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.base_dir, ignore_errors=True)


def layers_in_force(protections: dict) -> list[str]:
    """The sandbox layers in force, by name (Landlock with its ABI version)."""
    names = [f"landlock (ABI {protections.get('landlock_abi')})"] if protections.get("landlock") else []
    return names + [name.replace("_", " ") for name in ("seccomp", "network_namespace", "uid_drop",
                    "rlimits", "audit_hook") if protections.get(name)]  # fmt: skip


def _layers(network_namespace: bool | None, layers_off: tuple[str, ...] | None) -> dict:
    """Which of LAYERS to apply: all, less `layers_off` (default: LAYERS_OFF_ENV, a
    test-only comma list) and the network namespace when NETNS_ENV=0."""
    if layers_off is None:
        layers_off = env.sandbox_layers_off()
    unknown = set(layers_off) - set(LAYERS)
    if unknown:
        raise UserError(f"unknown sandbox layers {sorted(unknown)} (${LAYERS_OFF_ENV}); expected some of {LAYERS}")
    layers = {name: name not in layers_off for name in LAYERS}
    if network_namespace is None:
        network_namespace = env.sandbox_netns()
    layers["network_namespace"] = layers["network_namespace"] and network_namespace
    return layers


class WorkerPool:
    """N sandbox worker processes fed from one job queue by N dispatcher threads.

    Thread-safe: concurrent `map` calls interleave their jobs; each call gets its results
    in order. A worker that dies, hangs past `job_timeout_s` or has served `max_jobs` jobs
    is killed and replaced; the job it held gets ``{"error": ...}``.
    """

    def __init__(
        self,
        workers: int = 2,
        limits: Limits | None = None,
        handler: str = "echo_nemo.reward.score:evaluate_job",
        job_timeout_s: float | None = None,
        max_jobs: int = 5000,
        start_timeout_s: float = 120.0,
        network_namespace: bool | None = None,
        layers_off: tuple[str, ...] | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.layers = _layers(network_namespace, layers_off)
        self.network_namespace = self.layers["network_namespace"]
        self._warned = False
        self.handler = handler
        # Room for one (possibly starved) execution plus math-verify's own alarms.
        self.job_timeout_s = job_timeout_s or STARVED_GRACE * self.limits.wall_s + 30.0
        self.max_jobs = max_jobs
        self.start_timeout_s = start_timeout_s
        self.queue: queue.Queue = queue.Queue()
        self.closed = False
        self.restarts = 0
        self.workers: list[_Worker | None] = [None] * workers
        self.threads = [
            threading.Thread(target=self._dispatch, args=(i,), daemon=True, name=f"sandbox-{i}")
            for i in range(workers)
        ]
        for t in self.threads:
            t.start()

    def _worker(self, slot: int) -> _Worker:
        w = self.workers[slot]
        if w is None or w.proc.poll() is not None or w.jobs >= self.max_jobs:
            if w is not None:
                w.kill()
                self.restarts += 1
            w = self.workers[slot] = _Worker(
                self.handler, self.limits, self.start_timeout_s, self.layers
            )
            self._warn_once(w.info.get("protections", {}))
        return w

    def _warn_once(self, protections: dict) -> None:
        """Say once per pool which OS layers this machine could not apply."""
        missing = [f"{k} ({protections.get(k + '_note', '')})" for k in REQUIRED_BY_STRICT
                   if not protections.get(k)]  # fmt: skip
        if missing and not self._warned:
            self._warned = True
            log.warning("sandbox running without %s", ", ".join(missing))

    def _dispatch(self, slot: int) -> None:
        try:  # start eagerly so the first batch does not wait for imports
            self._worker(slot)
        except (WorkerDied, TimeoutError, OSError, ValueError):
            self.workers[slot] = None  # retried on the first job
        while True:
            item = self.queue.get()
            if item is None:
                return
            job, future = item
            try:
                result = self._worker(slot).request(job, self.job_timeout_s)
            except (WorkerDied, TimeoutError, OSError, ValueError) as e:
                w = self.workers[slot]
                if w is not None:
                    w.kill()
                    self.workers[slot] = None
                    self.restarts += 1
                result = {"error": f"worker failed: {e}"}
            if result.pop("retire", False):  # its zygote died: the worker exits, replace it
                self.workers[slot].kill()
                self.workers[slot] = None
                self.restarts += 1
            future.set_result(result)

    def submit(self, job: dict) -> Future:
        if self.closed:
            raise RuntimeError("the sandbox pool is closed")
        future: Future = Future()
        self.queue.put((job, future))
        return future

    def map(self, jobs: list[dict]) -> list[dict]:
        futures = [self.submit(job) for job in jobs]
        return [f.result() for f in futures]

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Block until every worker process has started (True) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(w is not None and w.proc.poll() is None for w in self.workers):
                return True
            time.sleep(0.05)
        return False

    def info(self) -> dict:
        """Workers, live workers, restarts, the protections a live worker reported (each
        layer, on or off, with why) and `layers`, the names of those in force."""
        live = [w for w in self.workers if w is not None and w.proc.poll() is None]
        protections = live[0].info.get("protections", {}) if live else {}
        return {
            "workers": len(self.workers),
            "live": len(live),
            "restarts": self.restarts,
            "protections": protections,
            "layers": layers_in_force(protections),
        }

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join(timeout=self.job_timeout_s + 5)
        for w in self.workers:
            if w is not None:
                w.kill()
        self.workers = [None] * len(self.workers)


_POOLS: list[WorkerPool] = []


@atexit.register
def _close_all() -> None:
    for pool in _POOLS:
        pool.close()


def register_pool(pool: WorkerPool) -> WorkerPool:
    """Close `pool` at interpreter exit."""
    _POOLS.append(pool)
    return pool
