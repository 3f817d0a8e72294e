"""Hostile model code against a real WorkerPool with short limits.

The attack tests run twice: with the audit hook on, and with it off (the test-only layer
switch) to prove the OS layers alone hold. Both runs leave the network namespace off, so
sockets meet Landlock and seccomp, not an empty namespace. An attack fails the test if it
is rewarded (each returns the truth only when it got through), writes anything into a
world-writable directory outside its run dir, reaches the listening port, or kills a
worker or fork server. All attacks of a run are scored in one call (the pool overlaps them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from answer_search import llm_code_search, tinygsm_search, token  # noqa: E402
from hostile import HOSTILE, RESOURCES, hostile_completion  # noqa: E402

from echo_nemo.reward import score  # noqa: E402
from echo_nemo.reward.sandbox import Limits, WorkerPool  # noqa: E402

LIMITS = Limits(wall_s=2.0, cpu_s=1, memory_mb=512)
# The attack runs: room for the answer-key search to finish on a loaded machine.
ATTACK_LIMITS = Limits(wall_s=5.0, cpu_s=3, memory_mb=512)
# Upper bound on one attack's scoring time: its wall limit plus room for a loaded machine.
BUDGET_S = LIMITS.wall_s + 20
PROJECT_FILE = str(Path(__file__).resolve().parents[2] / "pyproject.toml")
# Where the audit hook, when on, answers first (the OS layers hold behind it).
HOOK_FIRST = ("write_open", "write_symlink_escape", "write_rename_out", "read_project",
              "read_secret", "read_home", "read_etc_passwd", "read_parent_proc", "list_root", "socket_tcp",
              "socket_raw_module", "fork", "posix_spawn", "forkpty", "os_system", "subprocess",
              "ctypes", "kill_parent", "kill_process_group")  # fmt: skip
OK = "def simple_math_problem():\n    return 6 * 7\n"


def _pool(limits: Limits = LIMITS, **kwargs) -> WorkerPool:
    pool = WorkerPool(workers=2, limits=limits, **kwargs)
    assert pool.wait_ready()
    return pool


@pytest.fixture(scope="module", params=["audit_hook_on", "audit_hook_off"])
def attack_pool(request):
    hook = request.param == "audit_hook_on"
    pool = _pool(ATTACK_LIMITS, network_namespace=False, layers_off=() if hook else ("audit_hook",))
    protections = pool.info()["protections"]
    assert protections["audit_hook"] is hook and protections["network_namespace"] is False
    if not hook and not (protections["landlock"] and protections["seccomp"]):
        pool.close()
        pytest.skip(f"no Landlock or seccomp on this kernel: {protections}")
    yield pool, hook
    pool.close()


@pytest.fixture(scope="module")
def pool():
    pool = _pool()
    yield pool
    pool.close()


@pytest.fixture
def outside():
    """A world-writable directory outside any run dir, holding one world-readable file."""
    path = tempfile.mkdtemp(prefix="echo-nemo-outside-")
    os.chmod(path, 0o777)
    secret = os.path.join(path, "secret.txt")
    Path(secret).write_text("not for model code")
    os.chmod(secret, 0o666)
    yield path, secret
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
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


def test_no_attack_escapes_or_is_rewarded(attack_pool, outside, listener) -> None:
    pool, hook = attack_pool
    out, secret = outside
    port, connections = listener
    names = list(HOSTILE)
    completions = [hostile_completion(n, port, out, secret, PROJECT_FILE, str(Path.home())) for n in names]
    start = time.monotonic()
    scores = score(completions + [OK], ["42"] * (len(names) + 1), pool=pool)
    elapsed = time.monotonic() - start
    assert scores[-1].reward == 1.0, scores[-1]  # a normal completion in the same batch scores
    results = dict(zip(names, scores[:-1]))
    failures = {n: s for n, s in results.items() if s.reward != 0.0}
    assert not failures, failures
    assert sorted(os.listdir(out)) == ["secret.txt"], os.listdir(out)  # nothing written outside
    assert Path(secret).read_text() == "not for model code"
    assert connections == []  # no socket reached the port
    assert pool.restarts == 0 and pool.info()["live"] == 2  # no worker or fork server killed
    assert elapsed < (ATTACK_LIMITS.wall_s + 20) * len(names) / 2, elapsed
    violations = {n for n, s in results.items() if "sandbox violation" in (s.error or "")}
    if hook:
        assert set(HOOK_FIRST) <= violations, set(HOOK_FIRST) - violations
    else:  # the OS refused: no audit hook was there to
        assert not violations, violations
        denied = {n for n, s in results.items() if any(why in (s.error or "") for why in (
            "Permission", "not permitted", "can't start new thread",
            "cross-device link",  # Landlock's answer to a link across its boundary
            "unable to open database file"))}  # sqlite's words for EACCES  # fmt: skip
        # the rest fail otherwise: a signal or limit, an ImportError, a C library's return code
        expected = set(HOSTILE) - set(RESOURCES) - {"write_file_size", "subprocess", "ctypes",
                                                    "ctypes_via_loaded_module", "os_system"}  # fmt: skip
        assert expected <= denied, {n: results[n].error for n in expected - denied}
    # the pool survived: a normal completion still scores
    assert score([OK], ["42"], pool=pool)[0].reward == 1.0


def test_model_code_never_sees_an_answer(attack_pool) -> None:
    """Each search program gets its own unique truth; other items with unique truths are
    scored in the same call. No search finds any of them (and each search finishes)."""
    pool, hook = attack_pool
    searches = [tinygsm_search(False), tinygsm_search(True), llm_code_search(False), llm_code_search(True)]
    decoys = [f"def simple_math_problem():\n    return {i}\n" for i in range(8)]
    items = searches + decoys
    results = score(items, [token(i) for i in range(len(items))], pool=pool)
    for program, s in zip(searches, results):
        assert s.reward == 0.0, (program, s)
        if hook and "import" in program:  # it ran to its last step, /proc/self/mem, refused
            assert "sandbox violation" in s.error and "/proc/self/mem" in s.error, s
        else:  # it ran to the end and found nothing
            assert (s.answer, s.error) == ("0", None), (program, s)


def _search_in_a_fresh_interpreter(imports: bool, env: dict | None = None) -> str:
    """Run the search in its own interpreter, with a truth in a caller's frame, and return
    what it found. Never in this process: the search reads every open descriptor, and
    pytest-xdist's channel to its controller is one of them."""
    program = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from answer_search import tinygsm_search, token\n"
        "ns = {}\n"
        f"exec(tinygsm_search({imports}), ns)\n"
        "def caller():\n"
        "    truth = token(99)  # noqa: F841 (found through the frame)\n"
        "    return ns['simple_math_problem']()\n"
        "def caller_without_truth():\n"
        "    return ns['simple_math_problem']()\n"
        f"print(caller_without_truth() if {env is not None} else caller())\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_search_finds_a_truth_within_reach() -> None:
    """Control: the same programs, run where a truth sits in a caller's frame, find it."""
    for imports in (False, True):
        assert _search_in_a_fresh_interpreter(imports) == token(99)


def test_the_search_finds_a_truth_beyond_its_frames() -> None:
    """Control: a truth only in the environment is found too."""
    assert _search_in_a_fresh_interpreter(True, env={"ECHO_NEMO_TEST_TRUTH": token(98)}) == token(98)


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
    without naming numpy (so the line given first decides which zygote forks it)."""
    return (
        "<llm-code>\n" + first_line + "\n"
        "name = 'num' + 'py'\n"
        "1 if any(c.__module__.split('.')[0] == name for c in object.__subclasses__()) else 0\n"
        "</llm-code>\n"
    )


def test_import_free_code_forks_from_the_lean_zygote_and_a_dead_zygote_retires_its_worker() -> None:
    pool = WorkerPool(workers=1, limits=LIMITS)
    try:
        assert pool.wait_ready()
        lean, full = _numpy_seen("x = 1"), _numpy_seen("import math")
        assert [s.answer for s in score([lean, full], ["0", "0"], pool=pool)] == ["0", "1"]
        # the zygotes are the worker's only children while no execution runs
        worker = pool.workers[0].proc.pid
        zygotes = Path(f"/proc/{worker}/task/{worker}/children").read_text().split()
        assert len(zygotes) == 2
        os.kill(int(zygotes[0]), signal.SIGKILL)
        # a worker never forks a new zygote (it has held truths): it is replaced instead
        first = score([lean + " ", full + " "], ["0", "0"], pool=pool)
        assert any("sandbox unavailable" in (s.error or "") for s in first), first
        assert pool.restarts == 1
        again = score([lean + "  ", full + "  "], ["0", "0"], pool=pool)
        assert [s.answer for s in again] == ["0", "1"]
        assert pool.info()["live"] == 1
    finally:
        pool.close()

