"""Run model-written code away from the trainer and the server.

Design: the caller (trainer, reward server) owns a `WorkerPool` of long-lived worker
processes (``python -I -m echo_nemo.reward.sandbox``) started with a scrubbed
environment in their own empty temporary directory. A worker receives one job at a time
over a pipe and runs the trusted part (format parsing, math-verify in its main thread)
itself. Model code runs only in a child forked per execution; the child applies the
limits below, runs the code, sends back plain strings and exits. So hostile code never
shares a process with the verifier or with an earlier completion. Code that contains no
"import" is forked from the worker's lean fork parent (forked from the worker before it
loads numpy, sympy and math-verify: a cheaper fork), the rest from the worker itself.

Guarantees (Linux):
- Model code never runs in the caller's process or in the worker that verifies it.
- Per execution: CPU time (RLIMIT_CPU, then SIGKILL at the hard limit), wall time (the
  worker SIGKILLs the child; a child still runnable but starved of CPU by a busy machine
  gets up to 3x the wall limit, bounded by its CPU limit), address space (RLIMIT_AS), file size (RLIMIT_FSIZE),
  open files (RLIMIT_NOFILE), no core dumps, no new processes (RLIMIT_NPROC=0 after
  dropping to uid/gid 65534 when started as root; Python-level fork/exec/spawn/
  subprocess/os.system blocked by an audit hook in every case).
- Fresh empty working directory per execution, removed afterwards; scrubbed environment;
  stdin from /dev/null; stdout/stderr captured in memory up to a cap (fds 1/2 go to
  /dev/null); the worker's pipes are closed in the child.
- Network: the worker enters a new network namespace (loopback down, no routes) when the
  platform allows (root or user namespaces; often off on HPC nodes); socket creation and
  all ``socket.*`` operations are blocked by the audit hook in every case. Which
  protections are in force is reported by each worker (`WorkerPool.info()["protections"]`,
  the server's startup line and ``/health``); ``reward serve --strict`` refuses to run
  without the namespace.
- Files: the audit hook refuses to open, list, create, remove or rename paths outside the
  execution directory, except read-only access to the Python installation (stdlib and
  site-packages) needed for imports; /etc/passwd, the project and home dirs are refused.
  When started as root the child also runs as uid 65534, so the OS denies root-only files.
- ctypes/cffi are refused (the import and every ``ctypes.*`` audit event).
- A crash, kill or hang of a child costs only that completion (reward 0 with a reason);
  a dead or stuck worker is killed and replaced; the pool keeps serving.
- A completion that trips any sandbox rule gets reward 0 even if it caught the error.

Not guaranteed:
- Audit hooks are a Python-level fence: a bug in CPython or a C extension that lets code
  reach raw syscalls without an audit event (ctypes is closed off) escapes the file and
  socket rules; only the OS limits (rlimits, uid drop, namespace, process isolation) hold
  then. There is no seccomp filter and no filesystem namespace: as a non-root user
  without user namespaces, the child can read what that user can read at the OS level
  if it gets past the hook.
- Memory is bounded by address space, not resident memory; CPU by per-process time.
- The child reports its result over a pipe it shares with the model code, so that code
  can forge its own result message; this gains nothing beyond returning the value, except
  hiding a refused (and therefore harmless) sandbox violation.
- It is not a defence against a malicious *caller*: the pool trusts its jobs' framing.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass

from echo_nemo import env

NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    """Per-execution limits of the sandboxed child (seconds, MiB, counts, bytes)."""

    wall_s: float = 5.0
    cpu_s: int = 3
    memory_mb: int = 1024  # added to the worker's own address space
    file_size_mb: int = 1
    open_files: int = 32
    output_bytes: int = 64 * 1024
    answer_chars: int = 1000


# ---------------------------------------------------------------------------
# The child: runs model code (forked from a worker, never from the caller)
# ---------------------------------------------------------------------------

_BLOCKED_EVENTS_PREFIX = (
    "socket.",
    "ctypes.",
    "subprocess.",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
)
_BLOCKED_EVENTS = {
    "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn",
    "signal.pthread_kill", "os.setuid", "os.setgid", "sys.remote_exec", "webbrowser.open",
}  # fmt: skip
_BLOCKED_IMPORTS = {"ctypes", "_ctypes", "cffi", "_cffi_backend"}
_PATH_EVENTS = {
    "os.listdir", "os.scandir", "os.chdir", "os.mkdir", "os.remove", "os.rmdir", "os.rename",
    "os.chmod", "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime",
    "shutil.rmtree", "shutil.copyfile", "shutil.move", "glob.glob", "os.chflags",
}  # fmt: skip


class SandboxViolation(PermissionError):
    """Raised inside the child when code does something the sandbox forbids."""


class _CappedText:
    """A text stream that keeps at most `cap` characters (the rest is dropped)."""

    def __init__(self, cap: int) -> None:
        self.cap, self.parts, self.size, self.truncated = cap, [], 0, False

    def write(self, s: str) -> int:
        s = str(s)
        room = self.cap - self.size
        if room > 0:
            self.parts.append(s[:room])
            self.size += min(room, len(s))
        if len(s) > room:
            self.truncated = True
        return len(s)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return "".join(self.parts)


@functools.lru_cache(maxsize=1)
def _read_roots() -> tuple[str, ...]:
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    roots.update(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    # A venv's prefix may hold other things (the project, for a venv inside it): allow only lib/.
    return tuple(sorted(os.path.realpath(os.path.join(r, "lib")) + os.sep for r in roots)) + (
        os.path.realpath(sysconfig.get_paths()["stdlib"]) + os.sep,
    )


def _install_audit_hook(workdir: str, violations: list[str], read_roots: tuple[str, ...]) -> None:
    work = os.path.realpath(workdir) + os.sep
    read_devices = {"/dev/null", "/dev/urandom", "/dev/random", "/dev/zero"}

    def inside(path, allow_read: bool) -> bool:
        if isinstance(path, int):
            return True
        try:
            real = os.path.realpath(os.fsdecode(path))
        except Exception:
            return False
        if (real + os.sep).startswith(work):
            return True
        return allow_read and (real in read_devices or real.startswith(read_roots))

    def deny(reason: str):
        violations.append(reason)
        raise SandboxViolation(f"sandbox: {reason}")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None
                and isinstance(flags, int)
                and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if not inside(path, allow_read=not writes):
                deny(f"open {path!r} ({'write' if writes else 'read'}) outside the work dir")
        elif event == "import":
            if args[0].split(".")[0] in _BLOCKED_IMPORTS:
                deny(f"import {args[0]}")
        elif event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_EVENTS_PREFIX):
            deny(f"{event} is not allowed")
        elif event in _PATH_EVENTS:
            if args and not inside(
                args[0], allow_read=event in ("os.listdir", "os.scandir", "glob.glob")
            ):
                deny(f"{event} {args[0]!r} outside the work dir")

    sys.addaudithook(hook)


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _value_text(value: object, cap: int) -> str | None:
    """``str()`` of a returned value; floats that are whole numbers lose their ``.0``."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)[:cap]


def _run_program(job: dict, ns: dict) -> object:
    """Execute the job's code; return the answer value (tinygsm: call; llm_code: last expr)."""
    import ast

    if job["kind"] == "tinygsm":
        exec(compile(job["program"], "<completion>", "exec"), ns)
        return ns[job["entry"]]() if job.get("entry") else None
    value = None
    for block in job["blocks"]:  # blocks share one namespace, like notebook cells
        tree = ast.parse(block)
        value = None
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<llm-code>", "exec"), ns)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<llm-code>", "eval"), ns)
    return value


def _child_main(job: dict, limits: Limits, workdir: str, result_fd: int, blocked_modules: list[str]) -> None:
    """Body of the forked child. Never returns: ends with os._exit. `blocked_modules`: the
    loaded modules model code must not reach (listed by the parent: walking sys.modules here
    would touch, and so copy, a page per module entry)."""
    import resource

    try:
        read_roots = _read_roots()  # before the uid drop: imports may not work after it
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.dup2(result_fd, 3)
        os.closerange(4, 1 << 16)
        for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGPIPE, signal.SIGXCPU):
            signal.signal(sig, signal.SIG_DFL)
        os.chdir(workdir)
        if _LIBC is not None:  # die with the worker, e.g. when it is killed mid-job
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getuid() == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        vm = _vm_bytes()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        memory = vm + (limits.memory_mb << 20)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files,) * 2)
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"})
        for name in blocked_modules:
            del sys.modules[name]
    except BaseException as e:  # the sandbox could not be set up: run nothing
        os.write(3, json.dumps({"error": f"sandbox setup failed: {e!r}"}).encode())
        os._exit(0)

    out = _CappedText(limits.output_bytes)
    sys.stdout = sys.stderr = out
    violations: list[str] = []
    result: dict = {}
    _install_audit_hook(workdir, violations, read_roots)
    try:
        value = _run_program(job, {"__name__": "__main__", "__builtins__": __builtins__})
        result["value"] = _value_text(value, limits.answer_chars)
    except BaseException as e:  # SystemExit, KeyboardInterrupt, custom BaseException too
        try:
            result["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        except BaseException:
            result["error"] = "exception (unprintable)"
    try:
        result["stdout"] = out.getvalue()[-2000:]
        result["violations"] = [str(v)[:200] for v in violations[:5]]
        payload = json.dumps(result).encode()
    except BaseException:
        payload = json.dumps({"error": "result could not be serialised"}).encode()
    try:
        os.write(3, payload[: 1 << 20])
    finally:
        os._exit(0)


# A child that is runnable but starved of CPU (state R on an oversubscribed machine) gets
# up to this multiple of its wall limit; a sleeping or blocked child is killed on time.
STARVED_GRACE = 3.0


def _starved(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "R"
    except (OSError, IndexError):
        return False


_BLOCKED_LOADED: tuple[int, list[str]] = (-1, [])


def _blocked_modules() -> list[str]:
    """The loaded modules under _BLOCKED_IMPORTS, listed again only when sys.modules has
    grown or shrunk: walking it touches every entry, and after each fork every touched page
    costs the worker a fault."""
    global _BLOCKED_LOADED
    if _BLOCKED_LOADED[0] != len(sys.modules):
        names = [name for name in sys.modules if name.split(".")[0] in _BLOCKED_IMPORTS]
        _BLOCKED_LOADED = (len(sys.modules), names)
    return _BLOCKED_LOADED[1]


def execute(job: dict, limits: Limits, base_dir: str) -> dict:
    """Run `job` in a forked child under `limits`; return its result dict.

    Called in a worker's main thread. The result has `value` (str | None) or `error`,
    plus `stdout` and `violations`. Code that contains no "import" is forked from the
    worker's lean fork parent when it has one (`_LeanParent`), the rest from the worker.
    """
    global _LEAN
    code = job.get("program") or "".join(job.get("blocks") or ())
    if _LEAN is not None and limits == _LEAN.limits and "import" not in code:
        try:
            return _LEAN.run(job)
        except (OSError, ValueError):  # it died (it never runs model code): fork here from now on
            _LEAN = None
    return _fork_and_run(job, limits, base_dir)


def _fork_and_run(job: dict, limits: Limits, base_dir: str) -> dict:
    """Fork a child that runs `job` under `limits`, wait for it, return its result dict."""
    workdir = tempfile.mkdtemp(prefix="run-", dir=base_dir)
    if os.getuid() == 0:
        os.chown(workdir, NOBODY, NOBODY)
    blocked = _blocked_modules()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            _child_main(job, limits, workdir, write_fd, blocked)
        finally:
            os._exit(70)
    os.close(write_fd)
    chunks, size, killed = [], 0, None
    start = time.monotonic()
    deadline = start + limits.wall_s
    try:
        while True:
            left = deadline - time.monotonic()
            if (
                left <= 0
                and _starved(pid)
                and time.monotonic() - start < STARVED_GRACE * limits.wall_s
            ):
                deadline += (
                    0.25  # runnable but not scheduled (a busy machine): its CPU limit still holds
                )
                continue
            if left <= 0:
                killed = f"timeout: wall time limit ({limits.wall_s:g} s) exceeded"
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                continue
            data = os.read(read_fd, 65536)
            if not data:
                break
            size += len(data)
            if size > (1 << 20) + 65536:
                killed = "result too large"
                break
            chunks.append(data)
    finally:
        if killed:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(read_fd)
        shutil.rmtree(workdir, ignore_errors=True)
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
        result = json.loads(b"".join(chunks) or b"null")
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


# ---------------------------------------------------------------------------
# The worker process: trusted; runs jobs in its main thread
# ---------------------------------------------------------------------------

# Imported by the worker before any fork: the uid-65534 child cannot read a stdlib under
# /root, so modules it may need must already be loaded (socket too, so that a socket
# attempt meets the audit hook instead of an ImportError).
_PRELOAD = ("math", "cmath", "fractions", "decimal", "numbers", "itertools", "functools",
            "operator", "collections", "heapq", "bisect", "statistics", "random", "datetime",
            "calendar", "time", "string", "re", "json", "copy", "typing", "dataclasses", "enum",
            "textwrap", "socket", "encodings.idna", "numpy", "sympy", "math_verify")  # fmt: skip
PR_SET_PDEATHSIG = 1
_LIBC = None  # the worker's libc handle (ctypes), loaded before any model code runs
CLONE_NEWNET = 0x40000000
# ECHO_NEMO_SANDBOX_NETNS=0 skips the network namespace (e.g. to test the fallback).
NETNS_ENV = env.SANDBOX_NETNS.name


def _only_loopback() -> bool:
    """True when this process sees no network interface but loopback."""
    import socket

    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def _harden_worker(try_netns: bool) -> dict:
    """Die with the parent; leave the network when allowed. Returns the protections in force.

    The network namespace counts only when ``unshare(CLONE_NEWNET)`` succeeded and the
    worker then sees no interface but loopback (checked, not assumed). rlimits and the
    audit hook are applied in every forked child; the uid drop needs root.
    """
    import ctypes

    global _LIBC
    libc = _LIBC = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # parent already gone
        os._exit(0)
    if not try_netns:
        netns, note = False, f"disabled ({NETNS_ENV}=0)"
    elif libc.unshare(CLONE_NEWNET) != 0:
        netns = False
        note = f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
    else:
        netns = _only_loopback()
        note = "new namespace, loopback only" if netns else "new namespace still shows interfaces"
    return {
        "network_namespace": netns,
        "network_namespace_note": note,
        "uid_drop": os.getuid() == 0,
        "rlimits": True,
        "audit_hook": hasattr(sys, "addaudithook"),
    }


# What only the worker loads (math-verify needs sympy): the lean fork parent has the rest.
_HEAVY = ("numpy", "sympy", "math_verify")
_LEAN: _LeanParent | None = None  # set in a worker only


class _LeanParent:
    """A process forked from the worker before it loads numpy, sympy and math-verify, that
    forks the children for code containing no "import" (all of echo-lab's code and most of
    GSM8K-style code). A fork copies the parent's page tables and the exit tears them
    down: measured alone, an execution costs ~6 ms of CPU forked from here against ~10 ms
    from the full worker. The children are the same (`_child_main`, the same limits and
    protections); only code that imports may need a module this process lacks (and, as
    uid 65534, cannot load), so that code is forked from the worker."""

    def __init__(self, limits: Limits, base_dir: str, close_fds: tuple[int, ...]) -> None:
        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (job_w, result_r, *close_fds):  # the worker's protocol pipe among them
                    os.close(fd)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != 1:
                    _serve_lean(job_r, result_w, limits, base_dir)
            finally:
                os._exit(0)
        os.close(job_r)
        os.close(result_w)
        self.limits = limits
        self.jobs = os.fdopen(job_w, "wb", buffering=0)
        self.results = os.fdopen(result_r, "rb")

    def run(self, job: dict) -> dict:
        self.jobs.write((json.dumps(job) + "\n").encode())
        line = self.results.readline()
        if not line:
            raise OSError("the lean fork parent exited")
        return json.loads(line)


def _serve_lean(job_fd: int, result_fd: int, limits: Limits, base_dir: str) -> None:
    import gc

    gc.collect()
    gc.freeze()
    results = os.fdopen(result_fd, "wb", buffering=0)
    for line in os.fdopen(job_fd, "rb"):
        try:
            result = _fork_and_run(json.loads(line), limits, base_dir)
        except Exception as e:  # a bug in trusted code: report it, keep serving
            result = {"error": f"worker error: {type(e).__name__}: {e}"}
        results.write((json.dumps(result) + "\n").encode())


def worker_main(handler: str, limits: Limits, try_netns: bool = True) -> None:
    """Read JSON jobs from stdin, answer JSON lines on the original stdout."""
    import importlib
    import logging

    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    info = {"protections": _harden_worker(try_netns)}
    logging.disable(logging.WARNING)
    base_dir = os.getcwd()
    _read_roots()  # warm the cache: forked children must not need new imports
    for heavy in (False, True):
        for name in _PRELOAD:
            if (name in _HEAVY) is heavy:
                try:
                    importlib.import_module(name)
                except ImportError:
                    pass
        if not heavy:
            global _LEAN
            _LEAN = _LeanParent(limits, base_dir, close_fds=(proto_out.fileno(),))
    import gc

    gc.collect()
    gc.freeze()  # keep the collector off the preloaded objects: fewer copied pages per fork
    module, func = handler.split(":")
    run = getattr(importlib.import_module(module), func)
    proto_out.write((json.dumps({"ready": True, **info}) + "\n").encode())
    for line in sys.stdin.buffer:
        job = json.loads(line)
        try:
            result = run(job, limits, base_dir)
        except Exception as e:  # a bug in trusted code: report it, keep serving
            result = {"error": f"worker error: {type(e).__name__}: {e}"}
        proto_out.write((json.dumps(result) + "\n").encode())


# ---------------------------------------------------------------------------
# The pool: lives in the caller's process, runs no model code itself
# ---------------------------------------------------------------------------


class WorkerDied(RuntimeError):
    pass


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, handler: str, limits: Limits, start_timeout: float, netns: bool) -> None:
        self.base_dir = tempfile.mkdtemp(prefix="echo-nemo-sandbox-")
        os.chmod(self.base_dir, 0o711)  # the uid-65534 child must reach its run dir
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.base_dir,
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
        # -I: no PYTHON* variables, no user site, no cwd on sys.path; the package's own
        # location goes first so a source checkout works without an install.
        entry = (
            "import sys, json; sys.path.insert(0, sys.argv[3]); "
            "from echo_nemo.reward.sandbox import Limits, worker_main; "
            "worker_main(sys.argv[1], Limits(**json.loads(sys.argv[2])), sys.argv[4] == '1')"
        )
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        cmd = [sys.executable, "-I", "-c", entry, handler, json.dumps(asdict(limits)), package_root,
               "1" if netns else "0"]  # fmt: skip
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
    ) -> None:
        self.limits = limits or Limits()
        if network_namespace is None:
            network_namespace = env.sandbox_netns()
        self.network_namespace = network_namespace
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
                self.handler, self.limits, self.start_timeout_s, self.network_namespace
            )
        return w

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
        """Workers, live workers, restarts, and the protections a live worker reported."""
        live = [w for w in self.workers if w is not None and w.proc.poll() is None]
        return {
            "workers": len(self.workers),
            "live": len(live),
            "restarts": self.restarts,
            "protections": live[0].info.get("protections", {}) if live else {},
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
