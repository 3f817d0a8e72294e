"""The sandbox reports which layers are in force; `reward serve --strict` needs Landlock and
seccomp; the server counts and logs unreadable ground truths."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
from hostile import hostile_completion  # noqa: E402

from echo_nemo.reward.client import local_reward_server  # noqa: E402
from echo_nemo.reward.confine import SYS_LANDLOCK_CREATE_RULESET  # noqa: E402
from echo_nemo.reward.sandbox import CLONE_NEWNET, LAYERS_OFF_ENV, NETNS_ENV, WorkerPool  # noqa: E402
from echo_nemo.reward.score import Score  # noqa: E402
from echo_nemo.reward.server import TruthErrors, create_app, describe_protections  # noqa: E402


def _fresh_process_can(code: str) -> bool:
    return subprocess.run([sys.executable, "-c", code]).returncode == 0


def _netns_possible() -> bool:
    """Independent check: can a fresh process here leave the network namespace?"""
    return _fresh_process_can(
        "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
        f"sys.exit(0 if libc.unshare({CLONE_NEWNET}) == 0 else 1)"
    )


def _landlock_abi() -> int:
    code = (f"import ctypes, sys; abi = ctypes.CDLL(None).syscall({SYS_LANDLOCK_CREATE_RULESET}, "
            "None, 0, 1); print(max(abi, 0))")  # fmt: skip
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)


def test_pool_reports_protections_as_they_are(caplog) -> None:
    pool = WorkerPool(1)
    try:
        assert pool.wait_ready()
        protections = pool.info()["protections"]
    finally:
        pool.close()
    assert protections["network_namespace"] is _netns_possible()
    assert protections["uid_drop"] is (os.getuid() == 0)
    assert protections["rlimits"] is True and protections["audit_hook"] is True
    abi = _landlock_abi()
    assert protections["landlock"] is (abi > 0) and protections["landlock_abi"] == abi
    assert "fork servers" in protections["answer_isolation"]
    off = WorkerPool(1, network_namespace=False, layers_off=("landlock", "seccomp", "audit_hook"))
    try:
        with caplog.at_level(logging.WARNING):
            assert off.wait_ready()
            info = off.info()["protections"]
            assert off.info()["layers"] == ["uid drop", "rlimits"][int(os.getuid() != 0):]
            off._warn_once(info)  # said once per pool, however often asked
    finally:
        off.close()
    said = [r.getMessage() for r in caplog.records if "sandbox running without" in r.getMessage()]
    assert said == ["sandbox running without landlock (disabled), seccomp (disabled)"], said
    assert info["network_namespace"] is False and info["network_namespace_note"] == "disabled"
    assert (info["landlock"], info["seccomp"], info["audit_hook"]) == (False, False, False)
    assert "landlock OFF (disabled), seccomp OFF (disabled)" in describe_protections(info)


def test_strict_refuses_to_start_without_the_os_layers(cli) -> None:
    r = cli("reward", "serve", "--strict", "--workers", "1", "--port", "0",
            env={LAYERS_OFF_ENV: "seccomp"}, timeout=180)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "seccomp OFF (disabled)" in r.stderr  # the start-up report
    assert "--strict" in r.stderr and "lacks seccomp" in r.stderr and "Traceback" not in r.stderr


def test_health_reports_layers_and_the_os_layers_alone_keep_the_server_port_closed() -> None:
    """A server with neither network namespace nor audit hook: model code still cannot reach
    the server's own port (Landlock and seccomp), and /health says what is in force."""
    env = {NETNS_ENV: "0", LAYERS_OFF_ENV: "audit_hook"}
    with local_reward_server(workers=1, env=env) as url:
        health = httpx.get(url + "/health", timeout=10).json()
        p = health["protections"]
        assert p["network_namespace"] is False and p["audit_hook"] is False and p["rlimits"] is True
        assert "audit hook" not in health["layers"] and "network namespace" not in health["layers"]
        if not (p["landlock"] and p["seccomp"]):
            pytest.skip(f"no Landlock or seccomp on this kernel: {p}")
        assert f"landlock (ABI {p['landlock_abi']})" in health["layers"] and "seccomp" in health["layers"]
        port = int(url.rsplit(":", 1)[1])
        attacks = [hostile_completion(n, port) for n in ("socket_tcp", "socket_raw_module")]
        results = httpx.post(url + "/score", json={"completions": attacks, "ground_truths": ["42", "42"]},
                             timeout=120).json()["results"]  # fmt: skip
        assert [r["reward"] for r in results] == [0.0, 0.0], results
        assert all("PermissionError" in r["error"] for r in results), results
    if not _netns_possible():
        return  # --strict needs Landlock and seccomp only; the namespace is checked above
    with local_reward_server(workers=1, extra_args=("--strict",)) as url:
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["protections"]["network_namespace"] is True
        assert {"seccomp", "network namespace", "audit hook", "rlimits"} <= set(health["layers"])


def test_unreadable_labels_are_logged_and_counted(caplog) -> None:
    """slime's /reward answers a bare number: an unreadable label shows in the log and in
    /health instead."""
    with TestClient(create_app(workers=1)) as client, caplog.at_level(logging.WARNING):
        assert client.post("/reward", json={"response": "\\boxed{3}", "label": "3"}).json() == 1.0
        for label in ({"answer": 3}, "", [3]):
            assert client.post("/reward", json={"response": "\\boxed{3}", "label": label}).json() == 0.0
        assert client.get("/health").json()["unreadable_ground_truths"] == 3
    logged = [r.getMessage() for r in caplog.records if "unreadable ground truth" in r.getMessage()]
    assert len(logged) == 3 and all("/reward" in m for m in logged), logged


def test_truth_error_log_is_rate_limited(caplog) -> None:
    errors = TruthErrors(per_minute=2)
    bad = Score(0.0, "text", None, "unreadable ground truth 'x'", None)
    with caplog.at_level(logging.WARNING):
        errors.record([bad] * 5, "/reward")
        errors._window = (errors._window[0] - 61.0, *errors._window[1:])  # a minute later
        errors.record([bad], "/reward")
    messages = [r.getMessage() for r in caplog.records]
    assert errors.count == 6
    assert sum("unreadable ground truth (reward 0)" in m for m in messages) == 3
    assert any(m.startswith("3 more unreadable ground truths") for m in messages), messages
