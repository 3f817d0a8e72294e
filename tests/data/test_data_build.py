"""Streaming shard builds: equal to the in-memory build, any worker count, bounded blocks,
resume after SIGKILL, bad rows, every local source format, --max-tokens prefixes."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from reference_build import reference_build

from echo_nemo.config import load_recipe
from echo_nemo.data.build import build_shards, plan_sources
from echo_nemo.data.config import DataRecipe, SourceSpec
from echo_nemo.data.loader import read_shard
from echo_nemo.data.mixtures import interleave
from echo_nemo.data.sources import load_documents, source_items
from echo_nemo.errors import UserError

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes" / "data"
SMALL = ["echolab.num_problems=150", "echolab.num_background=40", "seq_length=64", "sequences_per_shard=30"]
quiet = dict(log=lambda *a: None)


def _recipe(name: str, *extra: str) -> DataRecipe:
    return load_recipe(DataRecipe, RECIPES / name, SMALL + list(extra))


def _rows(out: Path, m: dict) -> np.ndarray:
    return np.concatenate([read_shard(out, e, m) for e in m["shards"]])


def _documents(rows: np.ndarray, eos: int) -> Counter:
    """Whole documents (ids up to and including EOS) of best-fit rows; padding drops out."""
    docs: Counter = Counter()
    for row in rows:
        for piece in np.split(row, np.flatnonzero(row == eos) + 1):
            if len(piece) > 1:
                docs[tuple(piece)] += 1
    return docs


@pytest.mark.parametrize("packing", ["best_fit", "concat"])
def test_streaming_build_equals_the_in_memory_build(tmp_path, packing):
    """Mixture within one shuffle buffer (the echo-lab recipes): the very same rows."""
    recipe = _recipe("echo_fm3_tg_omi1_omi2.yaml", f"packing={packing}", "repeats.echo_tg=2",
                     "repeats.echo_omi1=0.5", "num_workers=2")
    m = build_shards(recipe, tmp_path / "s", **quiet)
    rows, tokens, docs = reference_build(recipe)
    assert np.array_equal(_rows(tmp_path / "s", m), rows)
    assert [s["tokens"] for s in m["sources"]] == tokens and [s["documents"] for s in m["sources"]] == docs
    assert [s["documents"] for s in m["sources"]] == [40, 300, 75, 150]
    assert [s["unique_documents"] for s in m["sources"]] == [40, 150, 75, 150]
    assert m["vocab_size"] == 1024 and (tmp_path / "s" / "tokenizer" / "tokenizer.json").is_file()


def test_quickstart_shards_are_unchanged(tmp_path):
    """The quickstart's smoke data stage builds what the in-memory builder built, and every
    echo-lab recipe at its default size fits one shuffle buffer (so `full` is unchanged too)."""
    from echo_nemo.quickstart import BUDGETS

    recipe = load_recipe(DataRecipe, REPO / "recipes" / BUDGETS["smoke"].data_recipe,
                         BUDGETS["smoke"].data_overrides)
    m = build_shards(recipe, tmp_path / "q", **quiet)
    assert m["packing"] == "best_fit"
    assert np.array_equal(_rows(tmp_path / "q", m), reference_build(recipe)[0])
    for path in sorted(RECIPES.glob("echo_*.yaml")):
        r = load_recipe(DataRecipe, path, [])
        assert sum(p.total for p in plan_sources(r, lambda *a: None)) <= r.shuffle_buffer, path.name


def test_small_buffer_any_worker_count_same_documents(tmp_path):
    """Blocks of 100 documents: memory bounded, every document still packed whole exactly
    as often as the in-memory build packs it, and the same bytes for 1, 2 or 3 workers."""
    base = ("echo_tg_omi1_omi2.yaml", "packing=best_fit", "shuffle_buffer=100", "repeats.echo_omi2=1.5")
    builds = [build_shards(_recipe(*base, f"num_workers={w}"), tmp_path / f"w{w}", **quiet) for w in (1, 2, 3)]
    shas = [[e["sha256"] for e in m["shards"]] for m in builds]
    assert shas[0] == shas[1] == shas[2]
    ref_rows, ref_tokens, _ = reference_build(_recipe(*base))
    rows = _rows(tmp_path / "w1", builds[0])
    assert not np.array_equal(rows, ref_rows[: len(rows)])  # blocks shuffle differently ...
    assert _documents(rows, 0) == _documents(ref_rows, 0)  # ... the same documents, whole
    assert [s["tokens"] for s in builds[0]["sources"]] == ref_tokens
    concat = build_shards(_recipe(*base, "packing=concat"), tmp_path / "c", **quiet)
    assert [s["tokens"] for s in concat["sources"]] == ref_tokens
    assert sum(ref_tokens) == concat["num_tokens"] + concat["dropped_tokens"]


def test_interleaving_keeps_every_prefix_at_the_target_proportions():
    totals, done = [300, 150, 225, 1], [0, 0, 0, 0]
    order = []
    for i in interleave(totals, done):
        done[i] += 1
        order.append(i)
    assert done == totals
    for n in range(1, len(order) + 1):  # each prefix holds about n * P_i / sum(P) picks of source i
        counts = np.bincount(order[:n], minlength=4)
        assert all(abs(c - n * t / sum(totals)) < 1 for c, t in zip(counts, totals)), n
    # resumable from any point: the rest of the order from the counts alone
    done = [order[:200].count(i) for i in range(4)]
    rest = []
    for i in interleave(totals, done):
        done[i] += 1
        rest.append(i)
    assert rest == order[200:]


def test_max_tokens_builds_a_prefix_with_the_mixture_shares(tmp_path, cli):
    full = build_shards(_recipe("echo_tg_omi1_omi2.yaml", "repeats.echo_tg=2"), tmp_path / "full", **quiet)
    r = cli("data", "build", RECIPES / "echo_tg_omi1_omi2.yaml", *SMALL, "repeats.echo_tg=2",
            "--max-tokens", "20000", "--out", tmp_path / "pre")
    assert r.returncode == 0, r.stderr[-2000:]
    pre = json.loads((tmp_path / "pre" / "manifest.json").read_text())
    total = sum(s["tokens"] for s in pre["sources"])
    assert 20000 <= total < 20000 + 400 and pre["max_tokens"] == 20000
    for a, b in zip(pre["sources"], full["sources"]):
        assert abs(a["share"] - b["share"]) < 0.03, (a, b)


# ----------------------------------------------------------------------------- resume after SIGKILL
def _build_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "echo_nemo.cli", "data", "build", str(RECIPES / "echo_tg_omi1_omi2.yaml"),
            "echolab.num_problems=1500", "echolab.num_background=0", "seq_length=64", "packing=concat",
            "sequences_per_shard=40", "shuffle_buffer=300", "num_workers=2", "--out", str(out), *extra]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_sigkill_mid_build_resumes_to_identical_shards_and_manifest(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    p = subprocess.Popen(_build_cmd(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    state = killed / ".build" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        try:
            ck = json.loads(state.read_text())["checkpoint"]
        except (OSError, ValueError, KeyError, TypeError):
            ck = None
        if ck and ck["block"] >= 2:
            workers = _children(p.pid)
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)  # the build process only, as `kill -9 PID` would
    assert p.wait() == -signal.SIGKILL, "the build finished before it could be killed"
    assert len(workers) == 2
    deadline = time.time() + 10  # its tokenizer workers die with it, none is left waiting
    while any(Path(f"/proc/{w}").exists() and "Z" not in _proc_state(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in _proc_state(w)]
    assert not (killed / "manifest.json").exists()
    partial = sorted(killed.glob("shard-*.tar"))
    assert partial, "expected shards from before the kill"
    before = {f.name: f.stat().st_mtime_ns for f in partial}

    r = subprocess.run(_build_cmd(killed), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout
    whole = tmp_path / "whole"  # the uninterrupted build, in this process (the same code)
    cmd = _build_cmd(whole)
    args = cmd[cmd.index("build") + 1:]
    recipe = load_recipe(DataRecipe, args[0], [a for a in args[1:] if "=" in a])
    build_shards(recipe, whole, **quiet)
    names = sorted(f.name for f in whole.glob("shard-*.tar"))
    assert names == sorted(f.name for f in killed.glob("shard-*.tar")) and len(names) > len(partial) // 2
    for name in names:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    assert (killed / "manifest.json").read_bytes() == (whole / "manifest.json").read_bytes()
    assert not (killed / ".build").exists()
    # shards finished before the kill were kept, not written again
    kept = [n for n in before if (killed / n).stat().st_mtime_ns == before[n]]
    assert len(kept) >= len(before) - 1


# ----------------------------------------------------------------------------- bad rows and missing sources
def _omi2_rows(path: Path) -> list[str]:
    good = [{"problem": f"What is {i} + {i}?", "generated_solution": f"It is \\boxed{{{2 * i}}}."} for i in range(60)]
    lines = [json.dumps(r) for r in good]
    lines.insert(10, '{"problem": "broken", "generated_solution": ')  # malformed JSON
    lines.insert(20, json.dumps({"problem": "no solution field"}))  # missing field
    lines.insert(30, json.dumps({"problem": "numbers", "generated_solution": 42}))  # not a string
    path.write_text("\n".join(lines) + "\n")
    return lines


def test_bad_rows_are_counted_and_skipped_or_exit_2_naming_file_and_line(tmp_path, cli):
    src = tmp_path / "omi2.jsonl"
    _omi2_rows(src)
    overrides = ["seq_length=32", "sequences_per_shard=50", "packing=concat",
                 "sources=[{name: omi2, path: " + str(src) + ", repeat: 2}]"]
    for w in (1, 3):  # 3 workers count the rows in 3 parts, each meeting a different bad row first
        recipe = load_recipe(DataRecipe, RECIPES / "as_fm3_tg.yaml", overrides + ["tokenizer=null", f"num_workers={w}"])
        m = build_shards(recipe, tmp_path / f"ok{w}", **quiet)
        (s,) = m["sources"]
        assert s["bad_rows"] == {"bad_json": 1, "missing_field": 1, "not_text": 1}  # once, though read twice
        assert (s["documents"], s["unique_documents"]) == (120, 60)

        r = cli("data", "build", RECIPES / "as_fm3_tg.yaml", *overrides, "tokenizer=null", "on_bad_row=error",
                f"num_workers={w}", "--out", tmp_path / f"err{w}")
        assert r.returncode == 2 and f"{src}:11" in r.stderr and "not a JSON line" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr

    missing = tmp_path / "nope.parquet"
    r = cli("data", "build", RECIPES / "as_fm3_tg.yaml", "tokenizer=null",
            f"sources=[{{name: tg, path: {missing}}}]", "--out", tmp_path / "m")
    assert r.returncode == 2 and str(missing) in r.stderr and "not found" in r.stderr


def test_unknown_hub_dataset_offline_exits_2_saying_how_to_use_a_local_copy(tmp_path, cli):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = cli("data", "build", RECIPES / "as_fm3_tg.yaml", "tokenizer=null", "sources=[{name: fm3, documents: 10}]",
            "--out", tmp_path / "o", env=env)
    assert r.returncode == 2 and "HuggingFaceTB/finemath" in r.stderr and "path" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- local formats
def _write_formats(rows: list[dict], d: Path) -> dict[str, Path]:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with gzip.open(d / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, d / "a.parquet", row_group_size=7)
    with pa.ipc.new_stream(d / "a.arrow", table.schema) as w:
        for batch in table.to_batches(max_chunksize=5):
            w.write_batch(batch)
    datasets.Dataset.from_list(rows).save_to_disk(str(d / "saved"))
    # a hub cache: snapshot of a dataset repo whose config folder holds split files
    cache = d / "hub"
    repo = cache / "datasets--HuggingFaceTB--finemath"
    snap = repo / "snapshots" / ("0" * 40) / "finemath-3plus"
    snap.mkdir(parents=True)
    pq.write_table(table.slice(0, 20), snap / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(20), snap / "train-00001-of-00002.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return {"jsonl": d / "a.jsonl", "gz": d / "a.jsonl.gz", "parquet": d / "a.parquet", "arrow": d / "a.arrow",
            "save_to_disk": d / "saved", "hub_cache": cache}


def test_every_local_format_reads_the_same_documents_and_resumes_at_a_row(tmp_path, monkeypatch):
    rows = [{"text": f"document {i}: " + "x" * (i % 7), "n": i} for i in range(37)]
    want = [r["text"] for r in rows]
    files = _write_formats(rows, tmp_path / "f")
    for kind, path in files.items():
        if kind == "hub_cache":
            monkeypatch.setenv("HF_HUB_CACHE", str(path))
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
            spec = SourceSpec(name="fm3")
        else:
            spec = SourceSpec(name="fm3", path=str(path))
        assert list(load_documents(spec)) == want, kind
        assert [i.text for i in source_items(spec, start=23)] == want[23:], kind
        if kind != "hub_cache":  # 3 parts (the parallel counting pass): every row in exactly one
            parts = [[i.text for i in source_items(spec, part=(k, 3))] for k in range(3)]
            assert all(len(p) == len(rows) for p in parts), kind  # rows outside a part still count
            assert sorted(t for p in parts for t in p if t is not None) == sorted(want), kind
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no data files"):
        list(load_documents(SourceSpec(name="fm3", path=str(tmp_path / "empty"))))


def test_crash_mid_build_of_a_file_source_resumes_to_the_same_shards(tmp_path, monkeypatch):
    """A jsonl source with bad rows, read 2.5 times (two passes and a subsample), crashing at
    its 5th shard: the rerun resumes from the source's recorded row and ends identical."""
    import echo_nemo.data.build as build

    src = tmp_path / "omi2.jsonl"
    _omi2_rows(src)
    over = ["seq_length=16", "sequences_per_shard=20", "num_workers=2", "packing=concat", "shuffle_buffer=25",
            "tokenizer=null", "sources=[{name: omi2, path: " + str(src) + ", repeat: 2.5}]"]
    recipe = lambda: load_recipe(DataRecipe, RECIPES / "as_fm3_tg.yaml", over)  # noqa: E731
    whole = build_shards(recipe(), tmp_path / "whole", **quiet)
    real = build.write_shard

    def crash(path, rows, first):
        if path.name == "shard-00005.tar":
            raise OSError("node lost")
        return real(path, rows, first)

    monkeypatch.setattr(build, "write_shard", crash)
    with pytest.raises(OSError, match="node lost"):
        build_shards(recipe(), tmp_path / "again", **quiet)
    state = json.loads((tmp_path / "again" / ".build" / "state.json").read_text())
    assert state["checkpoint"]["readers"][0]["row"] > 0  # stopped inside the file
    monkeypatch.setattr(build, "write_shard", real)
    msgs = []
    m = build_shards(recipe(), tmp_path / "again", log=msgs.append)
    assert any("resuming" in x for x in msgs)
    assert m == whole and m["sources"][0]["bad_rows"] == {"bad_json": 1, "missing_field": 1, "not_text": 1}
    assert m["sources"][0]["documents"] == 150
    for e in m["shards"]:
        assert (tmp_path / "again" / e["name"]).read_bytes() == (tmp_path / "whole" / e["name"]).read_bytes()
