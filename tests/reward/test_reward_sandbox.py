"""Hostile model code: every attack scores 0 with a reason, within its limit, and the
pool keeps working. Runs a real WorkerPool with short limits."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hostile import HOSTILE, hostile_completion  # noqa: E402

from echo_nemo.reward import score  # noqa: E402
from echo_nemo.reward.sandbox import Limits, WorkerPool  # noqa: E402

LIMITS = Limits(wall_s=2.0, cpu_s=1, memory_mb=512)
# Upper bound on one attack's scoring time: its wall limit plus room for a loaded machine.
BUDGET_S = LIMITS.wall_s + 20
ESCAPE_FILES = [f"/tmp/echo_nemo_sandbox_{n}.txt" for n in ("escape", "system", "ctypes")]

EXPECTED_REASON = {
    "infinite_loop": "limit",  # cpu or wall, whichever a loaded machine hits first
    "deep_recursion": "",  # RecursionError, memory or time, depending on the platform
    "fork_bomb": "os.fork",
    "memory_bomb": "memory limit",
    "huge_output": "limit",
    "write_outside_workdir": "sandbox violation: open",
    "read_outside_workdir": "sandbox violation: open",
    "read_etc_passwd": "sandbox violation: open '/etc/passwd'",
    "socket_to_local_port": "sandbox violation: socket",
    "os_system": "sandbox violation: os.system",
    "subprocess": "sandbox violation: subprocess",
    "ctypes": "sandbox violation: import ctypes",
    "sys_exit": "SystemExit",
    "base_exception": "Escape",
    "keyboard_interrupt": "KeyboardInterrupt",
    "signal_handlers": "limit",
    "sleep_past_limit": "timeout: wall time limit",
    "os_exit": "exited without a result",
    "kill_parent": "sandbox violation: os.kill",
    "ctypes_via_loaded_handle": "sandbox violation: ctypes.",
    "raw_socket_module": "sandbox violation: socket.__new__",
}


@pytest.fixture(scope="module")
def pool():
    pool = WorkerPool(workers=2, limits=LIMITS)
    assert pool.wait_ready()
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def listener():
    """A local TCP port that records any connection the sandbox lets through."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            got.append(conn.recv(100) or b"connected")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], got
    stop.set()
    thread.join()
    server.close()


def test_every_attack_scores_zero_with_a_reason_within_its_limit(pool, listener) -> None:
    port, connections = listener
    for path in ESCAPE_FILES:
        Path(path).unlink(missing_ok=True)
    names = list(HOSTILE)
    timings: dict[str, float] = {}

    def one(name: str):
        start = time.monotonic()
        result = score([hostile_completion(name, port)], ["42"], pool=pool)[0]
        timings[name] = time.monotonic() - start
        return result

    # Score them concurrently (two workers) so the slow attacks overlap.
    results: dict = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, one(n))) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in names:
        s = results[name]
        assert s.reward == 0.0, (name, s)
        assert s.error and EXPECTED_REASON[name] in s.error, (name, s)
    # Each finished within its limit (queueing behind the others included).
    assert max(timings.values()) < BUDGET_S * len(names) / 2, timings
    assert connections == []
    assert not any(os.path.exists(p) for p in ESCAPE_FILES)
    # The pool survived: a normal completion still scores.
    ok = score(["def simple_math_problem():\n    return 6 * 7\n"], ["42"], pool=pool)[0]
    assert ok.reward == 1.0


@pytest.mark.parametrize("name", ["sleep_past_limit", "infinite_loop", "signal_handlers"])
def test_time_limits_hold_one_by_one(pool, name) -> None:
    start = time.monotonic()
    s = score([hostile_completion(name)], ["42"], pool=pool)[0]
    elapsed = time.monotonic() - start
    assert s.reward == 0.0 and s.error
    assert elapsed < BUDGET_S, (name, elapsed)


def test_a_caught_violation_still_scores_zero(pool) -> None:
    sneaky = (
        "def simple_math_problem():\n"
        "    try:\n"
        "        open('/etc/passwd').read()\n"
        "    except Exception:\n"
        "        pass\n"
        "    return 42\n"
    )
    s = score([sneaky], ["42"], pool=pool)[0]
    assert s.reward == 0.0 and "sandbox violation" in s.error


def test_code_runs_in_an_empty_scrubbed_directory(pool) -> None:
    os.environ["ECHO_NEMO_SECRET_FOR_TEST"] = "leak"
    probe = (
        "def simple_math_problem():\n"
        "    import os\n"
        "    with open('scratch.txt', 'w') as f:\n"  # writing inside the work dir is allowed
        "        f.write('ok')\n"
        "    return len(os.listdir('.')) * 100 + len(os.environ.get('ECHO_NEMO_SECRET_FOR_TEST', ''))\n"
    )
    try:
        s = score([probe], ["100"], pool=pool)[0]
    finally:
        del os.environ["ECHO_NEMO_SECRET_FOR_TEST"]
    assert (s.reward, s.answer) == (1.0, "100"), s


def test_a_killed_worker_is_replaced(pool) -> None:
    worker = pool.workers[0]
    assert worker is not None
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    before = pool.restarts
    # distinct programs: identical ones are scored once and might all reach the live worker
    programs = [f"def simple_math_problem():\n    return {i}\n" for i in range(6)]
    results = score(programs, [str(i) for i in range(6)], pool=pool)
    assert [s.reward for s in results] == [1.0] * 6
    assert pool.restarts > before
    assert pool.info()["live"] == 2


def _numpy_seen(first_line: str) -> str:
    """An llm_code completion whose answer is 1 when its child has numpy's classes loaded,
    without naming numpy (so the line given first decides where it is forked from)."""
    return (
        "<llm-code>\n" + first_line + "\n"
        "name = 'num' + 'py'\n"
        "1 if any(c.__module__.split('.')[0] == name for c in object.__subclasses__()) else 0\n"
        "</llm-code>\n"
    )


def test_import_free_code_forks_from_the_lean_parent_and_the_rest_from_the_worker() -> None:
    pool = WorkerPool(workers=1, limits=LIMITS)
    try:
        assert pool.wait_ready()
        lean, full = _numpy_seen("x = 1"), _numpy_seen("import math")
        assert [s.answer for s in score([lean, full], ["0", "0"], pool=pool)] == ["0", "1"]
        # the lean parent killed: the worker forks every child itself, and keeps serving
        worker = pool.workers[0].proc.pid
        children = Path(f"/proc/{worker}/task/{worker}/children").read_text().split()
        assert len(children) == 1  # the lean parent (no execution is running)
        os.kill(int(children[0]), signal.SIGKILL)
        assert [s.answer for s in score([lean + " ", full + " "], ["0", "0"], pool=pool)] == ["1", "1"]
        assert pool.restarts == 0
    finally:
        pool.close()
