"""HTTP client for the reward server, and a context manager that runs one locally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from echo_nemo.net import free_port
from echo_nemo.reward.score import Score


class RewardServerError(RuntimeError):
    """The server refused the request (4xx) or stayed unreachable after the retries."""


class RewardClient:
    """``RewardClient(url).score(completions, ground_truths) -> list[Score]``.

    Transport errors and 5xx answers are retried `retries` times with exponential
    backoff (0.5 s, 1 s, 2 s, ...); a 4xx is raised at once with the server's message.
    """

    def __init__(self, url: str, timeout: float = 300.0, retries: int = 3) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                response = self.http.request(method, self.url + path, json=payload)
            except httpx.TransportError as e:
                last = e
                continue
            if response.status_code >= 500:
                last = RewardServerError(
                    f"{path}: HTTP {response.status_code}: {response.text[:500]}"
                )
                continue
            if response.status_code >= 400:
                try:
                    detail = response.json().get("detail", response.text)
                except ValueError:
                    detail = response.text
                raise RewardServerError(f"{path}: HTTP {response.status_code}: {detail}")
            return response.json()
        raise RewardServerError(
            f"{path}: no answer from {self.url} after {self.retries + 1} tries: {last}"
        )

    def health(self) -> dict:
        return self._request("GET", "/health")

    def score(self, completions: list[str], ground_truths: list[object]) -> list[Score]:
        data = self._request(
            "POST", "/score", {"completions": completions, "ground_truths": ground_truths}
        )
        return [Score.from_dict(r) for r in data["results"]]

    def get_reward(self, queries: list[str], prompts: list[str], labels: list[object]) -> list[float]:
        data = self._request(
            "POST", "/get_reward", {"query": queries, "prompts": prompts, "labels": labels}
        )
        return data["rewards"]

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def local_reward_server(
    workers: int = 2,
    timeout_s: float | None = None,
    start_timeout: float = 120.0,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run ``echo-nemo reward serve`` on a free local port; yield its URL; stop it.

    The server runs in its own session, so stopping it (SIGTERM, then SIGKILL to the
    whole process group) leaves none of its sandbox workers behind.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "echo_nemo.cli", "reward", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers)]  # fmt: skip
    if timeout_s is not None:
        cmd += ["--timeout", str(timeout_s)]
    cmd += list(extra_args)
    proc = subprocess.Popen(cmd, start_new_session=True, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RewardServerError(
                    f"reward server exited with code {proc.returncode} before answering"
                )
            try:
                if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RewardServerError(
                    f"reward server on {url} not healthy after {start_timeout:g} s"
                )
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything left in the server's process group (workers, their children)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
