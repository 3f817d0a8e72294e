"""Shard building throughput: `build_shards` vs a single-process per-document baseline.

    python benchmarks/bench_shards.py [--problems 6000] [--workers 2] [--seq-length 256]

Both runs turn the same echo-lab mixture (echo_tg_omi1_omi2) into tar shards of packed
sequences. The baseline encodes one document at a time in this process and writes one
tar member per sequence with the standard library; the builder uses a pool of
tokenizer processes with batch encoding and webdataset's writer. Prints tokens/s of both
and the ratio (builder / baseline). Document generation and module imports are excluded
from both timings; the machine's load shows in both, so compare the ratio, not the figures.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import webdataset  # noqa: E402, F401  (imports torch: a one-time cost kept out of the timing)

from echo_nemo.config import load_recipe  # noqa: E402
from echo_nemo.data import sources  # noqa: E402
from echo_nemo.data.config import DataRecipe  # noqa: E402
from echo_nemo.data.shards import build_shards  # noqa: E402
from echo_nemo.tokenizer import load_tokenizer  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "data" / "echo_tg_omi1_omi2.yaml"


def baseline(texts: list[str], seq_length: int, per_shard: int, out: Path) -> int:
    """Plain loop: encode each document, pack, write tar members one by one."""
    tok = load_tokenizer()
    stream: list[int] = []
    for t in texts:
        stream.extend(tok.encode(t))
        stream.append(tok.eos_id)
    width = seq_length + 1
    n = len(stream) // width
    rows = np.asarray(stream[: n * width], dtype=np.uint16).reshape(n, width)
    out.mkdir(parents=True, exist_ok=True)
    for s in range(0, n, per_shard):
        with tarfile.open(out / f"shard-{s // per_shard:05d}.tar", "w") as tar:
            for i, row in enumerate(rows[s : s + per_shard]):
                buf = io.BytesIO()
                np.save(buf, row)
                info = tarfile.TarInfo(f"{s + i:09d}.tokens.npy")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    return int(rows.size)


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the builder's pool)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=6000, help="echo-lab problems per format")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seq-length", type=int, default=256)
    args = ap.parse_args()

    recipe = load_recipe(
        DataRecipe,
        RECIPE,
        [
            f"echolab.num_problems={args.problems}",
            f"num_workers={args.workers}",
            f"seq_length={args.seq_length}",
            "packing=concat",  # the baseline's packing (best_fit adds ~1 s of Python per 60k documents)
        ],
    )
    # Generate the documents once and serve them from memory to both contestants.
    texts_by_source = {
        s.name: list(sources.load_documents(s, recipe.echolab)) for s in recipe.sources
    }
    all_texts = [t for s in recipe.sources for t in texts_by_source[s.name]]
    real_load = sources.load_documents
    sources.load_documents = lambda spec, cfg=None: iter(texts_by_source[spec.name])

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), cpu_seconds()
        base_tokens = baseline(all_texts, recipe.seq_length, recipe.sequences_per_shard, Path(tmp) / "base")
        base_s, base_cpu = time.perf_counter() - t0, cpu_seconds() - c0

        t0, c0 = time.perf_counter(), cpu_seconds()
        m = build_shards(recipe, Path(tmp) / "built", force=True, log=lambda *a: None)
        built_s, built_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    sources.load_documents = real_load

    base_tps, built_tps = base_tokens / base_s, m["num_tokens"] / built_s
    cpu_ratio = (built_cpu / m["num_tokens"]) / (base_cpu / base_tokens)
    print(f"documents: {len(all_texts)}, tokens: {m['num_tokens']:,}, workers: {args.workers}, "
          f"load average before: {load:.1f} on {os.cpu_count()} cores")
    print(f"baseline (1 process, per-document encode, tarfile): {base_tps:,.0f} tokens/s "
          f"({base_s:.2f} s wall, {base_cpu:.2f} s CPU)")
    print(f"build_shards (pool + batch encode, webdataset):     {built_tps:,.0f} tokens/s "
          f"({built_s:.2f} s wall, {built_cpu:.2f} s CPU)")
    print(f"ratio: {built_tps / base_tps:.2f}x wall-clock tokens/s "
          f"(CPU seconds per token, builder / baseline: {cpu_ratio:.2f})")


if __name__ == "__main__":
    main()
