"""Reward throughput: the sandboxed server against the release's in-process `exec`.

Mix (from ../shared/data): a third each format (TinyGSM-style functions, OMI1 <llm-code>
solutions, OMI2 boxed text), a quarter of the ground truths perturbed so those answers
are wrong, and a few hostile completions (infinite loop, sleep, sys.exit); only attacks
the baseline process survives are used, since the baseline runs them in-process.

- baseline: the release's approach: the same parsing, then `exec` in this process under
  a `signal.alarm` and math-verify in this process, one completion after another;
- sandbox, direct: `echo_nemo.reward.score` (worker pool, forked child per execution);
- sandbox, server, batched: `echo-nemo reward serve` with C concurrent clients, each
  posting groups of G completions (like GRPO groups) to /score; per-request latency p50/p99;
- sandbox, server, single-sample: the same server as OpenRLHF's client drives it, one
  /get_reward request per sample (query = prompt + completion + "</s>", a numeric label),
  at 64, 256 and 512 requests in flight; completions/s and p50/p99 per level, and the
  ratio single-sample / batched at 512 (target >= 0.8).

Run: python benchmarks/bench_reward.py [--n 510] [--clients 64] [--group 8] [--workers N]

Cost against another version of the sandbox, in one run: ``--compare-tree DIR`` measures
the sandbox only (score() direct and the batched server: CPU ms per completion counted over
the caller, the workers and every process they forked, and completions/s) for this
checkout and for the echo_nemo package in DIR (e.g. a checkout of the previous version),
alternating ``--repeats`` times, and prints each figure's median and the ratio this/DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from echo_nemo.reward.client import RewardClient, local_reward_server
from echo_nemo.reward.equivalence import is_equivalent
from echo_nemo.reward.formats import parse_completion
from echo_nemo.reward.sandbox import Limits, WorkerPool
from echo_nemo.reward.score import score

try:
    from echo_nemo.reward.zygote import run_program as _run_program
    from echo_nemo.reward.zygote import value_text as _value_text
except ImportError:  # --compare-tree runs this file against a version without zygote.py
    from echo_nemo.reward.sandbox import _run_program, _value_text

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TIMEOUT_S = 3  # the release's alarm; the sandbox gets the same wall and CPU limit
HOSTILE = [
    "def simple_math_problem():\n    while True:\n        pass\n",
    "def simple_math_problem():\n    import time\n    time.sleep(60)\n    return 1\n",
    "def simple_math_problem():\n    import sys\n    sys.exit(1)\n",
]


class _Alarm(Exception):
    pass


def release_reward(completion: str, truth: str) -> float:
    """In-process exec with a 3 s alarm (the release), then math-verify in-process."""
    parsed = parse_completion(completion)
    answer, from_code = parsed.boxed, False
    if parsed.format in ("tinygsm", "llm_code"):
        job = {
            "kind": parsed.format,
            "program": parsed.program,
            "entry": parsed.entry,
            "blocks": parsed.blocks,
        }

        def on_alarm(signum, frame):
            raise _Alarm

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(TIMEOUT_S)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                value = _value_text(_run_program(job, {"__name__": "__main__"}), 1000)
        except BaseException:  # generous: the release would die on SystemExit
            value = None
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        if value is not None:
            answer, from_code = value, True
        elif parsed.format == "tinygsm":
            answer = None
    if answer is None:
        return 0.0
    return float(is_equivalent(answer, truth, from_code=from_code))


def build_mix(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    per = n // 3
    tiny = json.loads(
        (DATA / "tinygsm_style/ThomasTheMaker_TinyGSM_gpt4.1_samples.json").read_text()
    )
    omi1 = [json.loads(x) for x in (DATA / "openmathinstruct1/openmathinstruct.test").open()]
    omi2 = [json.loads(x) for x in (DATA / "openmathinstruct2/openmathinstruct2.test").open()]
    omi1 = [r for r in omi1 if "<llm-code>" in r["generated_solution"]]
    items: list[tuple[str, str]] = []
    for row in rng.sample(tiny, per):
        parsed = parse_completion(row["assistant"])
        if parsed.format != "tinygsm" or parsed.entry is None:
            continue
        job = {"kind": "tinygsm", "program": parsed.program, "entry": parsed.entry}
        with contextlib.redirect_stdout(io.StringIO()):  # real data, trusted here
            value = _value_text(_run_program(job, {}), 100)
        items.append((row["assistant"], value or "0"))
    items += [(r["generated_solution"], r["expected_answer"]) for r in rng.choices(omi1, k=per)]
    items += [(r["generated_solution"], r["expected_answer"]) for r in rng.choices(omi2, k=per)]
    items = [(c, t + "1" if rng.random() < 0.25 else t) for c, t in items]  # a quarter wrong
    items += [(h, "1") for h in HOSTILE]
    # score() runs each distinct (completion, truth) once; the small test files repeat rows,
    # so a repeat gets trailing newlines (same answer) to stay real work for every path
    seen: dict[tuple[str, str], int] = {}
    for i, (c, t) in enumerate(items):
        seen[c, t] = seen.get((c, t), -1) + 1
        items[i] = (c + "\n" * seen[c, t], t)
    rng.shuffle(items)
    return [c for c, _ in items], [t for _, t in items]


def run_server(url: str, completions: list[str], truths: list[str], clients: int, group: int):
    work: queue.Queue = queue.Queue()
    for start in range(0, len(completions), group):
        work.put((completions[start : start + group], truths[start : start + group]))
    latencies: list[float] = []
    rewards: list[float] = []

    def client_loop() -> None:
        with RewardClient(url, timeout=600) as client:
            while True:
                try:
                    batch = work.get_nowait()
                except queue.Empty:
                    return
                t0 = time.perf_counter()
                result = client.score(*batch)
                latencies.append(time.perf_counter() - t0)
                rewards.extend(s.reward for s in result)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies, rewards


def run_single(url: str, completions: list[str], truths: list[str], in_flight: int):
    """One /get_reward request per completion, at most `in_flight` at once (OpenRLHF's shape)."""

    async def go() -> tuple[float, list[float], list[float]]:
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        work = list(zip(completions, truths))
        latencies: list[float] = []
        rewards: list[float] = [0.0] * len(work)
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:

            async def worker() -> None:
                while work:
                    i = len(work) - 1
                    completion, truth = work.pop()
                    prompt = f"Problem {i}:\n\n"
                    label = float(truth) if truth.lstrip("-").isdigit() else truth
                    payload = {"query": [prompt + completion + "</s>"], "prompts": [prompt],
                               "labels": [label]}  # fmt: skip
                    t0 = time.perf_counter()
                    r = await client.post(url + "/get_reward", json=payload)
                    latencies.append(time.perf_counter() - t0)
                    r.raise_for_status()
                    rewards[i] = r.json()["rewards"][0]

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return time.perf_counter() - t0, latencies, rewards

    return asyncio.run(go())


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    lat = sorted(latencies)
    return statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds used by these processes, every live process under them, and all the
    children they reaped (the forked executions)."""
    total = 0.0
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for proc in {p.pid: p for p in procs}.values():
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _server_pids(url: str) -> list[int]:
    port = url.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serve" in cmd and port in cmd:
            return [proc.pid]
    return []


def _score_direct(completions: list[str], truths: list[str], workers: int) -> tuple[list[float], float, float]:
    """score() on a fresh pool: the rewards, wall seconds and CPU seconds (caller + workers)."""
    pool = WorkerPool(workers, Limits(wall_s=TIMEOUT_S, cpu_s=TIMEOUT_S))
    pool.wait_ready()
    pids = [os.getpid(), *(w.proc.pid for w in pool.workers if w is not None)]
    t0, c0 = time.perf_counter(), _cpu_s(pids)
    direct = [s.reward for s in score(completions, truths, pool=pool)]
    direct_s, direct_cpu = time.perf_counter() - t0, _cpu_s(pids) - c0
    pool.close()
    return direct, direct_s, direct_cpu


def sandbox_figures(completions: list[str], truths: list[str], workers: int, clients: int,
                    group: int) -> dict:  # fmt: skip
    """score() direct and the batched server: completions/s and CPU ms per completion."""
    n = len(completions)
    direct, direct_s, direct_cpu = _score_direct(completions, truths, workers)
    with local_reward_server(workers=workers, timeout_s=TIMEOUT_S) as url:
        pids = _server_pids(url)
        c0 = _cpu_s(pids)
        server_s, latencies, _ = run_server(url, completions, truths, clients, group)
        server_cpu = _cpu_s(pids) - c0
    return {"direct_per_s": n / direct_s, "direct_cpu_ms": direct_cpu / n * 1000,
            "server_per_s": n / server_s, "server_cpu_ms": server_cpu / n * 1000,
            "mean_reward": sum(direct) / n}  # fmt: skip


def compare(args: argparse.Namespace) -> None:
    """This checkout against --compare-tree, alternating; medians and ratios."""
    here = str(Path(__file__).resolve().parents[1])
    runs: dict[str, list[dict]] = {here: [], args.compare_tree: []}
    cmd = [sys.executable, __file__, "--sandbox-only", "--n", str(args.n), "--workers",
           str(args.workers), "--clients", str(args.clients), "--group", str(args.group)]  # fmt: skip
    for _ in range(args.repeats):
        for tree in runs:
            env = {**os.environ, "PYTHONPATH": tree}
            out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
            runs[tree].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{tree}: {runs[tree][-1]}", flush=True)
    med = {tree: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for tree, rs in runs.items()}
    for key in ("direct_cpu_ms", "server_cpu_ms", "direct_per_s", "server_per_s"):
        a, b = med[here][key], med[args.compare_tree][key]
        print(f"{key:14s} this {a:8.2f}   {args.compare_tree} {b:8.2f}   ratio {a / b:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=510, help="completions in the mix")
    parser.add_argument("--levels", default="64,256,512", help="single-sample requests in flight")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--group", type=int, default=8, help="completions per request")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--compare-tree", default=None,
                        help="also measure the sandbox of the echo_nemo package in this folder")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per tree")
    parser.add_argument("--sandbox-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare_tree:
        return compare(args)
    completions, truths = build_mix(args.n)
    if args.sandbox_only:
        print(json.dumps(sandbox_figures(completions, truths, args.workers, args.clients, args.group)))
        return
    full_report(args, completions, truths)


def full_report(args: argparse.Namespace, completions: list[str], truths: list[str]) -> None:
    """The release baseline, score() direct, the batched server and single-sample levels."""
    print(f"mix: {len(completions)} completions ({len(HOSTILE)} hostile), {os.cpu_count()} CPUs, "
          f"{args.workers} sandbox workers")  # fmt: skip

    t0, c0 = time.perf_counter(), _cpu_s([os.getpid()])
    base = [release_reward(c, t) for c, t in zip(completions, truths)]
    base_s, base_cpu = time.perf_counter() - t0, _cpu_s([os.getpid()]) - c0
    base_rate = len(completions) / base_s

    direct, direct_s, direct_cpu = _score_direct(completions, truths, args.workers)

    levels = [int(x) for x in args.levels.split(",")]
    single: dict[int, tuple] = {}
    with local_reward_server(workers=args.workers, timeout_s=TIMEOUT_S) as url:
        pids = _server_pids(url)
        c0, me0 = _cpu_s(pids), time.process_time()
        server_s, latencies, _ = run_server(url, completions, truths, args.clients, args.group)
        server_cpu, batched_client_cpu = _cpu_s(pids) - c0, time.process_time() - me0
        for level in levels:
            c0, me0 = _cpu_s(pids), time.process_time()
            took, lats, got = run_single(url, completions, truths, level)
            cpu = (_cpu_s(pids) - c0, time.process_time() - me0)  # server + workers, this client
            agree_single = sum(a == b for a, b in zip(got, direct))
            single[level] = (len(completions) / took, *_percentiles(lats), agree_single, *cpu)
    server_rate = len(completions) / server_s
    p50, p99 = _percentiles(latencies)

    agree = sum(a == b for a, b in zip(base, direct))
    figures = (base_rate, base_s, base, direct, direct_s, server_rate, server_s, p50, p99, latencies)
    _print_report(args, completions, figures, base_cpu, direct_cpu, server_cpu, batched_client_cpu,
                  agree, single)  # fmt: skip


def _print_report(args, completions, figures, base_cpu, direct_cpu, server_cpu, batched_client_cpu,
                  agree, single) -> None:  # fmt: skip
    base_rate, base_s, base, direct, direct_s, server_rate, server_s, p50, p99, latencies = figures
    print(
        f"baseline (in-process exec + alarm): {base_rate:8.1f} completions/s  ({base_s:.1f} s, mean reward {sum(base) / len(base):.3f})"
    )
    print(
        f"sandbox, score() direct:            {len(completions) / direct_s:8.1f} completions/s  ({direct_s:.1f} s, mean reward {sum(direct) / len(direct):.3f})"
    )
    print(
        f"sandbox, server, {args.clients} clients x {args.group}: {server_rate:8.1f} completions/s  ({server_s:.1f} s)"
    )
    print(
        f"server request latency: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms over {len(latencies)} requests"
    )
    n = len(completions)
    print(f"CPU ms per completion: baseline {base_cpu / n * 1000:.1f}, sandbox direct (caller + workers) "
          f"{direct_cpu / n * 1000:.1f}, server (server + workers) {server_cpu / n * 1000:.1f}, "
          f"its batched client {batched_client_cpu / n * 1000:.1f}")  # fmt: skip
    print(f"ratio server/baseline: {server_rate / base_rate:.2f}x; rewards agree on {agree}/{len(base)}")  # fmt: skip
    for level, (rate, s50, s99, agree_single, cpu_server, cpu_client) in single.items():
        print(f"single-sample, {level:3d} in flight:      {rate:8.1f} completions/s  p50 {s50 * 1000:.0f} ms, "
              f"p99 {s99 * 1000:.0f} ms; rewards agree with score() on {agree_single}/{n}; CPU ms per "
              f"completion: server + workers {cpu_server / n * 1000:.1f}, client {cpu_client / n * 1000:.1f}")  # fmt: skip
    if single:
        top = max(single)
        print(f"ratio single-sample ({top} in flight) / batched ({args.clients} x {args.group}): "
              f"{single[top][0] / server_rate:.2f}x (target >= 0.8x)")  # fmt: skip


if __name__ == "__main__":
    main()
