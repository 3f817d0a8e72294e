"""The real reward server (uvicorn in a subprocess) through the real httpx client."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hostile import RESOURCES, SIGNALS, hostile_completion  # noqa: E402

from echo_nemo.reward.client import (  # noqa: E402
    RewardClient,
    RewardServerError,
    local_reward_server,
)


@pytest.fixture(scope="module")
def url():
    with local_reward_server(workers=2, timeout_s=2.0) as url:
        yield url


def _batch(seed: int, n: int) -> tuple[list[str], list[str], list[float]]:
    """Mixed formats; item i is right when (seed + i) is even."""
    completions, truths, expected = [], [], []
    for i in range(n):
        value = seed * 1000 + i
        shown = value if (seed + i) % 2 == 0 else value + 1
        kind = i % 3
        if kind == 0:
            completions.append(f"def simple_math_problem():\n    return {shown}\n")
        elif kind == 1:
            completions.append(f"<llm-code>\n{shown // 2} + {shown - shown // 2}\n</llm-code>")
        else:
            completions.append(f"Adding up, we get \\boxed{{{shown}}}.")
        truths.append(str(value))
        expected.append(1.0 if shown == value else 0.0)
    return completions, truths, expected


def test_concurrent_clients_get_their_results_in_order(url) -> None:
    failures: list[str] = []
    done: list[int] = []

    def client_thread(seed: int) -> None:
        with RewardClient(url, timeout=120) as client:
            for round_ in range(3):
                completions, truths, expected = _batch(seed * 10 + round_, 24)
                rewards = [s.reward for s in client.score(completions, truths)]
                if rewards != expected:
                    failures.append(f"client {seed} round {round_}: {rewards} != {expected}")
                done.append(len(rewards))

    threads = [threading.Thread(target=client_thread, args=(seed,)) for seed in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert sum(done) == 6 * 3 * 24


def test_hostile_batch_scores_zero_while_health_answers(url) -> None:
    names = list(RESOURCES) + list(SIGNALS) + ["socket_tcp", "fence_globals"]
    port = int(url.rsplit(":", 1)[1])
    results: list = []
    worker = threading.Thread(
        target=lambda: results.extend(
            RewardClient(url, timeout=300).score(
                [hostile_completion(n, port) for n in names], ["42"] * len(names)
            )
        )
    )
    worker.start()
    health_ok = 0
    while worker.is_alive():
        response = httpx.get(url + "/health", timeout=5.0)
        assert response.status_code == 200 and response.json()["status"] == "ok"
        health_ok += 1
        time.sleep(0.2)
    worker.join()
    assert health_ok >= 2
    assert len(results) == len(names)
    bad = [(n, s) for n, s in zip(names, results) if s.reward != 0.0 or not s.error]
    assert bad == []
    health = httpx.get(url + "/health", timeout=5.0).json()
    assert health["live"] == 2 and health["restarts"] == 0


def test_openrlhf_get_reward(url) -> None:
    prompts = ["What is 6*7?\n\n", "What is 1+1?\n\n"]
    queries = [
        prompts[0] + "def simple_math_problem():\n    return 6 * 7\n",
        prompts[1] + "\\boxed{3}",
    ]
    response = httpx.post(
        url + "/get_reward", json={"query": queries, "prompts": prompts, "labels": ["42", "2"]}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["rewards"] == [1.0, 0.0]
    assert body["extra_logs"]["format_tinygsm"] == [1.0, 0.0]
    assert RewardClient(url).get_reward(queries, prompts, ["42", "3"]) == [1.0, 1.0]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 422, "expected a JSON object"),
        (b'{"completions": "x", "ground_truths": ["1"]}', 422, "must be a list"),
        (b'{"completions": [1], "ground_truths": ["1"]}', 422, "completions[0] must be a string"),
        (b'{"completions": ["a", "b"], "ground_truths": ["1"]}', 422, "same length"),
        (b'{"ground_truths": ["1"]}', 422, "missing field 'completions'"),
        (b"\xff\xfe", 400, "malformed JSON"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(url, body: bytes, status: int, message: str) -> None:
    response = httpx.post(
        url + "/score", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_oversized_requests_are_refused(url) -> None:
    big = {"completions": ["x" * 70_000], "ground_truths": ["1"]}
    response = httpx.post(url + "/score", json=big)
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    huge = b'{"completions": ["' + b"x" * (33 * 2**20) + b'"]}'
    response = httpx.post(url + "/score", content=huge, timeout=60)
    assert response.status_code == 413
    with pytest.raises(RewardServerError, match="422"):
        RewardClient(url).score(["a"], [])
    assert httpx.get(url + "/health").status_code == 200


def test_client_retries_then_reports_an_unreachable_server() -> None:
    client = RewardClient("http://127.0.0.1:9", timeout=1, retries=2)
    start = time.monotonic()
    with pytest.raises(RewardServerError, match="after 3 tries"):
        client.health()
    assert time.monotonic() - start >= 1.5  # backoff 0.5 s + 1 s


def _server_tree(port: int) -> list[psutil.Process]:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serve" in cmd and str(port) in cmd:
            return [proc, *proc.children(recursive=True)]
    return []


def test_local_reward_server_leaves_no_process_behind() -> None:
    with local_reward_server(workers=2) as url:
        port = int(url.rsplit(":", 1)[1])
        tree = _server_tree(port)
        assert len(tree) >= 3  # the server and its two sandbox workers
        assert RewardClient(url).score(["\\boxed{1}"], ["1"])[0].reward == 1.0
    time.sleep(0.5)
    alive = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_cli_score_file(cli, tmp_path) -> None:
    rows = [
        {"completion": "def simple_math_problem():\n    return 5\n", "answer": "5"},
        {"completion": "so \\boxed{4}", "answer": "5"},
    ]
    path = tmp_path / "completions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("reward", "score", str(path), timeout=300)
    assert result.returncode == 0, result.stderr
    scores = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(s["reward"], s["format"]) for s in scores] == [(1.0, "tinygsm"), (0.0, "text")]
    assert "mean reward 0.5000 over 2 rows" in result.stderr


def test_cli_bad_input_exits_2(cli, tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"completion": "x", "answer": "1"}\n{"completion": 3}\n')
    result = cli("reward", "score", str(path))
    assert result.returncode == 2
    assert f"{path}:2" in result.stderr and "'completion'" in result.stderr
    missing = cli("reward", "score", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr
    zero = cli("reward", "serve", "--workers", "0")
    assert zero.returncode == 2 and "--workers" in zero.stderr


def _gsm8k_rows(shared_data, n: int) -> list[dict]:
    rows = [json.loads(line) for line in (shared_data / "gsm8k/test.jsonl").open()][:n]
    for row in rows:
        row["number"] = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    return rows


def test_score_endpoint_reads_dataset_ground_truths(url, shared_data) -> None:
    """/score takes GSM8K's whole answer field, '#### N' and JSON numbers; no silent 0."""
    rows = _gsm8k_rows(shared_data, 12)
    completions = [f"so \\boxed{{{r['number']}}}" for r in rows] * 3 + ["\\boxed{5}"] * 2
    truths = [r["answer"] for r in rows] + [f"#### {r['number']}" for r in rows]
    truths += [int(r["number"]) for r in rows] + ["no answer in this text at all", None]
    response = httpx.post(url + "/score", json={"completions": completions, "ground_truths": truths}, timeout=120)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["reward"] for r in results] == [1.0] * 36 + [0.0, 0.0]
    assert [r["truth"] for r in results[:12]] == [r["number"] for r in rows]
    assert all(r["truth"] is None and r["error"] for r in results[36:])


def test_cli_score_reads_gsm8k_answers_and_exits_2_on_unreadable(cli, tmp_path, shared_data, url) -> None:
    rows = _gsm8k_rows(shared_data, 6)
    lines = [{"completion": f"\\boxed{{{r['number']}}}", "answer": r["answer"]} for r in rows]
    path = tmp_path / "gsm8k_scored.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    for extra in ((), ("--url", url)):
        ok = cli("reward", "score", str(path), *extra, timeout=300)
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert [json.loads(x)["reward"] for x in ok.stdout.splitlines()] == [1.0] * 6
    lines.insert(2, {"completion": "\\boxed{3}", "answer": "She bought some apples."})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    for extra in ((), ("--url", url)):
        bad = cli("reward", "score", str(path), *extra, timeout=300)
        assert bad.returncode == 2
        printed = [json.loads(x) for x in bad.stdout.splitlines()]
        assert [p["reward"] for p in printed] == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # every row printed
        assert printed[2]["truth"] is None and "She bought" in printed[2]["error"]
        assert "1 of 7 rows" in bad.stderr and "rows 3" in bad.stderr and "'answer'" in bad.stderr
