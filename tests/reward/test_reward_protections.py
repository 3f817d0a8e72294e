"""The sandbox reports which protections are in force; `reward serve --strict` needs the network one."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from echo_nemo.reward.client import local_reward_server
from echo_nemo.reward.sandbox import CLONE_NEWNET, NETNS_ENV, WorkerPool


def _netns_possible() -> bool:
    """Independent check: can a fresh process here leave the network namespace?"""
    code = (
        "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
        f"sys.exit(0 if libc.unshare({CLONE_NEWNET}) == 0 else 1)"
    )
    return subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_pool_reports_protections_as_they_are() -> None:
    pool = WorkerPool(1)
    try:
        assert pool.wait_ready()
        protections = pool.info()["protections"]
    finally:
        pool.close()
    assert protections["network_namespace"] is _netns_possible()
    assert protections["uid_drop"] is (os.getuid() == 0)
    assert protections["rlimits"] is True and protections["audit_hook"] is True
    off = WorkerPool(1, network_namespace=False)
    try:
        assert off.wait_ready()
        info = off.info()["protections"]
    finally:
        off.close()
    assert info["network_namespace"] is False and NETNS_ENV in info["network_namespace_note"]


def test_strict_refuses_to_start_without_network_isolation(cli) -> None:
    r = cli("reward", "serve", "--strict", "--workers", "1", "--port", "0",
            env={NETNS_ENV: "0"}, timeout=180)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "network namespace OFF" in r.stderr  # the startup report
    assert "--strict" in r.stderr and "network isolation" in r.stderr and "Traceback" not in r.stderr


def test_health_reports_protections_and_strict_starts_when_isolated() -> None:
    with local_reward_server(workers=1, env={NETNS_ENV: "0"}) as url:
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["protections"]["network_namespace"] is False
        assert health["protections"]["rlimits"] is True
    if not _netns_possible():
        pytest.skip("this machine cannot create network namespaces: --strict cannot start here")
    with local_reward_server(workers=1, extra_args=("--strict",)) as url:
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["protections"]["network_namespace"] is True
        assert "loopback only" in health["protections"]["network_namespace_note"]

