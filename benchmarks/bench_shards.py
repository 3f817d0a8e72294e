"""Streaming shard builds: tokens/s with 2 tokenizer workers vs 1, and peak memory for a
corpus 1x and 8x the size.

    python benchmarks/bench_shards.py                 # 1x = 20,000 problems per format (~7.5M tokens), 8x ~60M
    python benchmarks/bench_shards.py --smoke         # a small corpus, a few seconds: checks the script runs

The corpus is echo-lab text written once to jsonl files (outside every timing): the 1x
corpus is one file (`--problems` problems in each of the three formats plus prose), the
8x corpus is eight such files generated with different seeds (distinct documents, read
as one folder source). Each build runs in a fresh process of its own and reports its
wall time, the tokens it packed and its peak resident memory: the main process (reading,
shuffle block, packing, writing) and the largest tokenizer worker. Every build uses the
same recipe: concat packing at seq_length 2048 (the paper's), a shuffle buffer of
`--shuffle-buffer` documents.

Targets: 2 workers >= 1.8x the tokens/s of 1; peak RSS at 8x <= 1.2x that at 1x (memory
is bounded by the shuffle buffer, not by the corpus). Compare the ratios, not the figures:
the machine's load shows in both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_corpus(path: Path, problems: int, seed: int) -> int:
    """Echo-lab documents (three formats + prose) as jsonl {"text": ...}; returns the count."""
    from echo_nemo.data.config import EchoLabConfig
    from echo_nemo.data.sources import load_documents

    cfg = EchoLabConfig(seed=seed, num_problems=problems, num_background=problems // 4)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for name in ("echo_tg", "echo_omi1", "echo_omi2", "echo_fm3"):
            for doc in load_documents(name, cfg):
                f.write(json.dumps({"text": doc}) + "\n")
                n += 1
    return n


def child(folder: str, out: str, workers: int, shuffle_buffer: int) -> None:
    """One build in this fresh process; prints a JSON line with its figures."""
    import webdataset  # noqa: F401  (imports torch: a one-time cost kept out of the timing)

    from echo_nemo.data.build import build_shards
    from echo_nemo.data.config import DataRecipe, SourceSpec

    recipe = DataRecipe(name="bench", sources=[SourceSpec(name="fm3", path=folder)], seq_length=2048,
                        packing="concat", sequences_per_shard=1000, num_workers=workers,
                        shuffle_buffer=shuffle_buffer)
    recipe.validate()
    t0 = time.perf_counter()
    m = build_shards(recipe, out, force=True, log=lambda *a: None)
    seconds = time.perf_counter() - t0
    rss_main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    rss_worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    tokens = sum(s["tokens"] for s in m["sources"])
    print(json.dumps({"tokens": tokens, "seconds": seconds, "rss_main_mb": rss_main, "rss_worker_mb": rss_worker}))


def run_build(folder: Path, out: Path, workers: int, shuffle_buffer: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(folder), str(out), str(workers), str(shuffle_buffer)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"build failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=20000, help="echo-lab problems per format in the 1x corpus")
    ap.add_argument("--shuffle-buffer", type=int, default=20000, help="documents per shuffle block")
    ap.add_argument("--smoke", action="store_true", help="tiny corpus (checks the script, not the figures)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        folder, out, workers, buffer = args.child
        child(folder, out, int(workers), int(buffer))
        return
    problems, buffer = (600, 500) if args.smoke else (args.problems, args.shuffle_buffer)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one, eight = root / "x1", root / "x8"
        one.mkdir()
        eight.mkdir()
        t0 = time.perf_counter()
        docs = write_corpus(one / "part-0.jsonl", problems, seed=0)
        os.link(one / "part-0.jsonl", eight / "part-0.jsonl")
        for seed in range(1, 8):
            docs += write_corpus(eight / f"part-{seed}.jsonl", problems, seed=seed)
        print(f"corpus: {docs:,} documents written in {time.perf_counter() - t0:.0f} s "
              f"(1x = 1 file, 8x = 8 files); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

        w1 = run_build(one, root / "o1", 1, buffer)
        w2 = run_build(one, root / "o2", 2, buffer)
        x8 = run_build(eight, root / "o8", 2, buffer)
    tps1, tps2 = w1["tokens"] / w1["seconds"], w2["tokens"] / w2["seconds"]
    print(f"1x corpus, 1 worker : {w1['tokens']:>12,} tokens {w1['seconds']:7.1f} s {tps1:>12,.0f} tokens/s")
    print(f"1x corpus, 2 workers: {w2['tokens']:>12,} tokens {w2['seconds']:7.1f} s {tps2:>12,.0f} tokens/s "
          f"peak RSS main {w2['rss_main_mb']:.0f} MiB, worker {w2['rss_worker_mb']:.0f} MiB")
    print(f"8x corpus, 2 workers: {x8['tokens']:>12,} tokens {x8['seconds']:7.1f} s "
          f"{x8['tokens'] / x8['seconds']:>12,.0f} tokens/s "
          f"peak RSS main {x8['rss_main_mb']:.0f} MiB, worker {x8['rss_worker_mb']:.0f} MiB")
    print(f"ratio: 2 workers / 1 worker tokens/s = {tps2 / tps1:.2f}x (target >= 1.8)")
    total = lambda r: r["rss_main_mb"] + 2 * r["rss_worker_mb"]  # noqa: E731 - main + both workers
    print(f"ratio: peak RSS 8x / 1x = main {x8['rss_main_mb'] / w2['rss_main_mb']:.2f}, "
          f"main + workers {total(x8) / total(w2):.2f} (target <= 1.2; corpus ratio "
          f"{x8['tokens'] / w2['tokens']:.1f}x)")


if __name__ == "__main__":
    main()
