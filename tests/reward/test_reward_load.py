"""A real RL step's load: 512 concurrent single-sample requests against the real server.

OpenRLHF (openrlhf/utils/agent.py, `_fetch_rewards_via_http`) posts one request per
sample, all at once, each with a 180 s timeout: a 512-sample step is 512 concurrent
requests. Every one must come back 200 with its own right reward.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from echo_nemo.reward.client import local_reward_server

N = 512
PROMPT = "Problem {i}: what is {i} + 7?\n\n"


def _sample(i: int) -> tuple[str, str, int, float]:
    """(query, prompt, label, expected reward); item i is right when i % 3 != 0."""
    prompt = PROMPT.format(i=i)
    shown = i + 7 if i % 3 else i + 8
    query = f"<s>{prompt}{i} + 7 = {shown}, so the answer is \\boxed{{{shown}}}.</s>"
    return query, prompt, i + 7, 1.0 if i % 3 else 0.0


async def _step(url: str) -> tuple[list[int], list[float], float]:
    limits = httpx.Limits(max_connections=N, max_keepalive_connections=N)
    async with httpx.AsyncClient(timeout=httpx.Timeout(180.0), limits=limits) as client:

        async def one(i: int) -> tuple[int, float]:
            query, prompt, label, _ = _sample(i)
            r = await client.post(url + "/get_reward",
                                  json={"query": [query], "prompts": [prompt], "labels": [label]})  # fmt: skip
            return r.status_code, (r.json()["rewards"][0] if r.status_code == 200 else -1.0)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(N)))
        return [s for s, _ in results], [r for _, r in results], time.perf_counter() - t0


@pytest.mark.slow
def test_512_concurrent_single_sample_requests_all_right() -> None:
    with local_reward_server(workers=2) as url:
        statuses, rewards, seconds = asyncio.run(_step(url))
        health = httpx.get(url + "/health", timeout=10).json()
    assert statuses == [200] * N
    assert rewards == [_sample(i)[3] for i in range(N)]
    # the requests were scored in shared batches, not one pool trip each
    assert health["batching"]["requests"] == N and health["batching"]["batches"] < N / 4
    print(f"512 single-sample requests in {seconds:.1f} s, {health['batching']['batches']} batches")
