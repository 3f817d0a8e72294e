"""The fork server (zygote) and the child that runs model code.

Invariant: model code runs in a process that has never held a ground truth, another
item's completion or the server's state. A worker forks its zygotes at start-up, before
it reads its first job; a zygote never reads a job either. Per execution the worker makes
two fresh pipes and passes the child's ends to the zygote (SCM_RIGHTS, with a one-byte
request); the zygote forks, closes them and reports the pid. The child reads its own
program (and run dir) from the job pipe, confines itself (`_confine_child`: rlimits, uid
drop, environment, Landlock + seccomp, then the audit hook), runs the code and writes
only its output to the result pipe. The worker keeps the truth and compares after. So the
child's memory, descriptors and environment hold its own program and nothing else to read
an answer from; Landlock keeps /proc and every other process's files out of reach.

Child layers, in order: stdin/stdout/stderr on /dev/null, the result pipe on fd 3, every
other fd closed; default signal handlers; chdir to a fresh run dir; die with the zygote;
uid/gid 65534 when root; rlimits (CPU, address space, file size, open files, no core, no
processes); a scrubbed environment; ctypes/cffi modules dropped from sys.modules; then
`confine.confine` (Landlock, seccomp: irreversible); then the audit hook, which turns what
it refuses into a readable "sandbox violation" (and reward 0 even if the code catches it).
"""

from __future__ import annotations

import ast
import gc
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
from dataclasses import dataclass

from echo_nemo.reward import confine

NOBODY = 65534
PR_SET_PDEATHSIG = 1
_STATUS = struct.Struct("=ii")  # (pid, wait status; -1 when only forked)


@dataclass(frozen=True)
class Limits:
    """Per-execution limits of the sandboxed child (seconds, MiB, counts, bytes)."""

    wall_s: float = 5.0
    cpu_s: int = 3
    memory_mb: int = 1024  # added to the zygote's own address space
    file_size_mb: int = 1
    open_files: int = 32
    output_bytes: int = 64 * 1024
    answer_chars: int = 1000


@dataclass
class ChildSetup:
    """What every child of one zygote applies: its limits, the OS layers, the audit hook
    switch, and the loaded modules model code must not reach (listed once in the zygote)."""

    limits: Limits
    plan: confine.Plan
    audit_hook: bool
    read_roots: tuple[str, ...]
    blocked_modules: tuple[str, ...]


_BLOCKED_EVENTS_PREFIX = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn")
_BLOCKED_EVENTS = {
    "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn",
    "signal.pthread_kill", "os.setuid", "os.setgid", "sys.remote_exec", "webbrowser.open",
}  # fmt: skip
BLOCKED_IMPORTS = {"ctypes", "_ctypes", "cffi", "_cffi_backend"}
_PATH_EVENTS = {
    "os.listdir", "os.scandir", "os.chdir", "os.mkdir", "os.remove", "os.rmdir", "os.rename",
    "os.chmod", "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime",
    "shutil.rmtree", "shutil.copyfile", "shutil.move", "glob.glob", "os.chflags",
}  # fmt: skip
_TWO_PATHS = {"os.rename", "os.link", "shutil.copyfile", "shutil.move"}
_READ_DEVICES = {"/dev/null", "/dev/urandom", "/dev/random", "/dev/zero"}


class SandboxViolation(PermissionError):
    """Raised inside the child when code does something the audit hook refuses."""


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


def _writes(mode, flags) -> bool:
    if mode is not None:
        return any(c in str(mode) for c in "wax+")
    return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


def install_audit_hook(workdir: str, violations: list[str], read_roots: tuple[str, ...]) -> None:
    """The Python-level layer: refuse, with a readable reason, what the OS layers also deny."""
    work = os.path.realpath(workdir) + os.sep

    def inside(path, allow_read: bool) -> bool:
        if isinstance(path, int):
            return True
        try:
            real = os.path.realpath(os.fsdecode(path))
        except Exception:
            return False
        if (real + os.sep).startswith(work):
            return True
        return allow_read and (real in _READ_DEVICES or real.startswith(read_roots))

    def deny(reason: str):
        violations.append(reason)
        raise SandboxViolation(f"sandbox: {reason}")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = _writes(mode, flags)
            if not inside(path, allow_read=not writes):
                deny(f"open {path!r} ({'write' if writes else 'read'}) outside the work dir")
        elif event == "import":
            if args[0].split(".")[0] in BLOCKED_IMPORTS:
                deny(f"import {args[0]}")
        elif event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_EVENTS_PREFIX):
            deny(f"{event} is not allowed")
        elif event in _PATH_EVENTS:
            reads = event in ("os.listdir", "os.scandir", "glob.glob")
            # both paths of a rename, link or copy; only where a symlink is made (args[1])
            paths = args[1:2] if event == "os.symlink" else args[:2] if event in _TWO_PATHS else args[:1]
            for path in paths:
                if not inside(path, allow_read=reads):
                    deny(f"{event} {path!r} outside the work dir")

    sys.addaudithook(hook)


def value_text(value: object, cap: int) -> str | None:
    """``str()`` of a returned value; floats that are whole numbers lose their ``.0``."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)[:cap]


def run_program(job: dict, ns: dict) -> object:
    """Execute the job's code; return the answer value (tinygsm: call; llm_code: last expr)."""
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


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _confine_child(setup: ChildSetup, workdir: str, result_fd: int) -> None:
    """Every layer but the audit hook, in order; raises if one fails (then nothing runs)."""
    limits = setup.limits
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.dup2(result_fd, 3)
    os.closerange(4, 1 << 16)
    for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGPIPE, signal.SIGXCPU, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(workdir)
    if setup.plan.libc is not None:  # die with the zygote, e.g. when the worker is killed
        setup.plan.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    ruleset = confine.landlock_ruleset(setup.plan, workdir)
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    memory = _vm_bytes() + (limits.memory_mb << 20)
    for res, value in ((resource.RLIMIT_CORE, (0, 0)),
                       (resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1)),
                       (resource.RLIMIT_AS, (memory, memory)),
                       (resource.RLIMIT_FSIZE, (limits.file_size_mb << 20,) * 2),
                       (resource.RLIMIT_NOFILE, (limits.open_files,) * 2),
                       (resource.RLIMIT_NPROC, (0, 0))):  # fmt: skip
        resource.setrlimit(res, value)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"})
    for name in setup.blocked_modules:
        sys.modules.pop(name, None)
    confine.confine(setup.plan, ruleset)


def _child_main(setup: ChildSetup, job_fd: int, result_fd: int) -> None:
    """Body of a child forked by the zygote. Never returns: ends with os._exit."""
    try:
        with os.fdopen(job_fd, "rb") as f:
            message = json.loads(f.read())
        job, workdir = message["job"], message["workdir"]
        _confine_child(setup, workdir, result_fd)
    except BaseException as e:  # the sandbox could not be set up: run nothing
        for fd in (3, result_fd):  # 3 once the result pipe is there
            try:
                os.write(fd, json.dumps({"error": f"sandbox setup failed: {e!r}"}).encode())
                break
            except OSError:
                continue
        os._exit(0)
    if job["kind"] == "probe":  # trusted: which OS layers hold, before any audit hook
        os.write(3, json.dumps({"probe": confine.probe()}).encode())
        os._exit(0)
    out = _CappedText(setup.limits.output_bytes)
    sys.stdout = sys.stderr = out
    violations: list[str] = []
    result: dict = {}
    if setup.audit_hook:
        install_audit_hook(workdir, violations, setup.read_roots)
    try:
        value = run_program(job, {"__name__": "__main__", "__builtins__": __builtins__})
        result["value"] = value_text(value, setup.limits.answer_chars)
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


def serve_zygote(sock: socket.socket, setup: ChildSetup) -> None:
    """The zygote's loop: per request fork one child with the two passed descriptors, report
    its pid, reap it, report its wait status. Reads no job itself. Ends when the worker does."""
    gc.collect()
    gc.freeze()  # keep the collector off the preloaded objects: fewer copied pages per fork
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 16, 2)
        except OSError:
            return
        if not msg or len(fds) != 2:
            return
        pid = os.fork()
        if pid == 0:
            try:
                os.close(sock.fileno())
                _child_main(setup, fds[0], fds[1])
            finally:
                os._exit(70)
        for fd in fds:
            os.close(fd)
        sock.send(_STATUS.pack(pid, -1))
        _, status = os.waitpid(pid, 0)
        sock.send(_STATUS.pack(pid, status))


class ZygoteDied(RuntimeError):
    """The fork server is gone: its worker cannot run code any more (and must not fork a
    new one, having held truths since it started)."""


class Zygote:
    """Worker-side handle of one fork server, forked from the worker before any job."""

    def __init__(self, setup: ChildSetup, close_fds: tuple[int, ...]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                for fd in close_fds:  # the worker's protocol pipes among them
                    os.close(fd)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                if setup.plan.libc is not None:
                    setup.plan.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != 1:
                    serve_zygote(theirs, setup)
            finally:
                os._exit(0)
        theirs.close()
        self.pid, self.sock = pid, ours

    def start(self, job: dict, workdir: str) -> int:
        """Fork a child for `job` in `workdir`; return (pid, result fd) once it has its program."""
        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        try:
            socket.send_fds(self.sock, [b"F"], [job_r, result_w])
            reply = self.sock.recv(_STATUS.size)
        except OSError as e:
            for fd in (job_w, result_r):
                os.close(fd)
            raise ZygoteDied(f"the fork server is gone: {e}") from e
        finally:
            os.close(job_r)
            os.close(result_w)
        if len(reply) != _STATUS.size:
            os.close(job_w)
            os.close(result_r)
            raise ZygoteDied("the fork server exited")
        try:
            _write_all(job_w, json.dumps({"job": job, "workdir": workdir}).encode())
        except BrokenPipeError:  # the child died before reading: its status says why
            pass
        finally:
            os.close(job_w)
        return _STATUS.unpack(reply)[0], result_r

    def wait(self) -> int:
        """The wait status of the child started last (the zygote reaps it)."""
        reply = self.sock.recv(_STATUS.size)
        if len(reply) != _STATUS.size:
            raise ZygoteDied("the fork server exited")
        return _STATUS.unpack(reply)[1]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        select.select([], [fd], [])
        view = view[os.write(fd, view) :]
