"""Shards and loader: exact round trip, DP split, resume, atomic builds, corruption errors."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from echo_nemo.config import load_recipe
from echo_nemo.data.build import build_shards
from echo_nemo.data.config import DataRecipe
from echo_nemo.data.loader import ShardLoader, read_manifest, read_shard, verify_shards
from echo_nemo.data.shards import pack_best_fit
from echo_nemo.data.sources import load_documents
from echo_nemo.errors import UserError
from echo_nemo.tokenizer import load_tokenizer

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "data" / "echo_2xtg_omi1_omi2.yaml"
SMALL = ["echolab.num_problems=120", "seq_length=64", "sequences_per_shard=40", "num_workers=2",
         "repeats.echo_omi1=0.5", "packing=concat"]  # the best_fit tests override it


def _recipe(*extra: str) -> DataRecipe:
    return load_recipe(DataRecipe, RECIPE, SMALL + list(extra))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "mix"
    manifest = build_shards(_recipe(), out, log=lambda *a: None)
    return out, manifest


def _all_rows(out: Path, m: dict) -> np.ndarray:
    return np.concatenate([read_shard(out, e, m) for e in m["shards"]])


def test_shards_hold_the_tokenized_mixture(built):
    out, m = built
    recipe, tok = _recipe(), load_tokenizer()
    assert m["seq_length"] == 64 and m["vocab_size"] == tok.vocab_size and m["tokenizer"] == tok.path
    assert m["tokenizer_dir"] == "tokenizer" and load_tokenizer(out / "tokenizer").encode("12 apples") == \
        tok.encode("12 apples")
    rows = _all_rows(out, m)
    assert rows.shape == (m["num_sequences"], 65) and len(m["shards"]) > 2
    # tokens per source = the source's documents (+EOS) times its repeat factor
    per_doc = {s.name: [len(tok.encode(d)) + 1 for d in load_documents(s, recipe.echolab)]
               for s in recipe.sources}
    by_name = {s["name"]: s for s in m["sources"]}
    assert by_name["echo_tg"]["tokens"] == 2 * sum(per_doc["echo_tg"])
    assert by_name["echo_omi2"]["tokens"] == sum(per_doc["echo_omi2"])
    assert by_name["echo_omi1"]["documents"] == 60  # half of 120, subsampled
    total = sum(s["tokens"] for s in m["sources"])
    assert total == rows.size + m["dropped_tokens"]
    assert abs(sum(s["share"] for s in m["sources"]) - 1) < 1e-9
    # the packed stream is whole documents joined by EOS: decoding between EOS gives documents
    stream = rows.reshape(-1)
    cuts = np.flatnonzero(stream == tok.eos_id)
    docs = {d for s in recipe.sources for d in load_documents(s, recipe.echolab)}
    pieces = [tok.decode(stream[a + 1:b].tolist()) for a, b in zip(cuts[:-1], cuts[1:])]
    assert pieces and all(p in docs for p in pieces)


def test_best_fit_packing_keeps_every_document_whole():
    rng = np.random.default_rng(0)
    # documents end in EOS (0) and hold no other 0
    docs = [np.append(rng.integers(1, 50, n), 0).astype(np.uint16) for n in rng.integers(2, 31, 300)]
    docs.append(np.append(np.arange(1, 100), 0).astype(np.uint16))  # 100 tokens: 3 full rows + 4
    rows, padding = pack_best_fit(docs, 32, pad_id=0, seed=0)
    assert rows.shape[1] == 32 and padding == rows.size - sum(len(d) for d in docs)
    full = [row for row in rows if not (row == 0).any()]
    assert len(full) == 3 and full[0][0] == 1  # the long document's rows, from its start
    # every other row is whole documents then padding: cutting after each 0 gives them back
    pieces = [tuple(p) + (0,) for row in rows if (row == 0).any()
              for p in np.split(row, np.flatnonzero(row == 0) + 1)[:-1] for p in [p[:-1]] if len(p)]
    assert sorted(pieces) == sorted([tuple(d) for d in docs[:-1]] + [(97, 98, 99, 0)])
    # best fit wastes little, and the row order is seeded
    assert len(rows) <= np.ceil(sum(len(d) for d in docs) / 32) * 1.05
    assert (pack_best_fit(docs, 32, pad_id=0, seed=0)[0] == rows).all()
    assert not (pack_best_fit(docs, 32, pad_id=0, seed=1)[0] == rows).all()


def test_best_fit_shards_hold_whole_documents(tmp_path):
    recipe, tok = _recipe("packing=best_fit", "seq_length=512"), load_tokenizer()  # no document is longer
    m = build_shards(recipe, tmp_path / "bf", log=lambda *a: None)
    rows = _all_rows(tmp_path / "bf", m)
    assert m["packing"] == "best_fit" and m["dropped_tokens"] == 0
    assert sum(s["tokens"] for s in m["sources"]) + m["padding_tokens"] == rows.size
    assert m["padding_tokens"] < 0.05 * rows.size
    docs = {d for s in recipe.sources for d in load_documents(s, recipe.echolab)}
    for row in rows:  # each row: documents whole from its first token, then EOS padding
        cuts = np.flatnonzero(row == tok.eos_id)
        starts = np.concatenate([[0], cuts[:-1] + 1])
        texts = [tok.decode(row[a:b].tolist()) for a, b in zip(starts, cuts) if b > a]
        assert texts and all(t in docs for t in texts)
    with pytest.raises(UserError, match="packing='tight'.*concat, best_fit"):
        _recipe("packing=tight").validate()


def test_build_is_deterministic_and_rerun_is_a_no_op(built, tmp_path):
    out, m = built
    again = build_shards(_recipe(), tmp_path / "again", log=lambda *a: None)
    assert [e["sha256"] for e in again["shards"]] == [e["sha256"] for e in m["shards"]]
    msgs = []
    build_shards(_recipe(), tmp_path / "again", log=msgs.append)
    build_shards(_recipe("num_workers=1"), tmp_path / "again", log=msgs.append)  # same content
    assert "up to date" in msgs[0] and "up to date" in msgs[1]
    other = build_shards(_recipe("seed=5"), tmp_path / "other", log=lambda *a: None)
    assert [e["sha256"] for e in other["shards"]] != [e["sha256"] for e in m["shards"]]


@pytest.mark.parametrize("mbs", [3, 8])
def test_two_dp_ranks_read_every_sequence_once_per_epoch(built, mbs):
    out, m = built
    n = m["num_sequences"]
    rows = _all_rows(out, m)
    want = Counter(map(bytes, rows.astype(np.int64)))
    loaders = [ShardLoader(out, mbs, dp_rank=r, dp_size=2, seed=1) for r in range(2)]
    its = [iter(ld) for ld in loaders]
    got: list[bytes] = []
    seen_per_rank: list[set] = [set(), set()]
    for _ in range(-(-n // (2 * mbs))):  # ceil: enough global batches to cover an epoch
        for r, it in enumerate(its):
            batch = next(it)
            assert batch.shape == (mbs, 65) and str(batch.dtype) == "torch.int64"
            for row in batch.numpy():
                got.append(bytes(row))
                seen_per_rank[r].add(bytes(row))
    # the first n global positions are exactly one epoch: each sequence once
    first_epoch = [got[k] for k in range(len(got)) if _global_pos(k, mbs) < n]
    assert Counter(first_epoch) == want
    assert len(first_epoch) == n
    # the next epoch is another order of the same sequences
    assert [loaders[0].sequence_at(k).tobytes() for k in range(n, n + 5)] != \
           [loaders[0].sequence_at(k).tobytes() for k in range(5)]


def _global_pos(k: int, mbs: int) -> int:
    """Position in the global stream of the k-th row collected above (batches alternate ranks)."""
    step, rest = divmod(k, 2 * mbs)
    rank, j = divmod(rest, mbs)
    return (step * 2 + rank) * mbs + j


def test_resume_neither_repeats_nor_skips(built):
    out, _ = built
    ref = ShardLoader(out, 4, dp_rank=1, dp_size=2, seed=3)
    it = iter(ref)
    full = [next(it) for _ in range(30)]
    first = ShardLoader(out, 4, dp_rank=1, dp_size=2, seed=3)
    it1 = iter(first)
    for _ in range(17):
        next(it1)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = ShardLoader(out, 4, dp_rank=1, dp_size=2, seed=3)
    resumed.load_state_dict(state)
    it2 = iter(resumed)
    for b in range(17, 30):
        assert np.array_equal(next(it2).numpy(), full[b].numpy())
    with pytest.raises(UserError, match="seed"):
        ShardLoader(out, 4, dp_rank=1, dp_size=2, seed=4).load_state_dict(state)


def test_interrupted_build_never_looks_complete(tmp_path, monkeypatch):
    import echo_nemo.data.build as shards

    real = shards.write_shard

    def flaky(path, rows, first):  # a full disk while writing the third shard
        if path.name == "shard-00002.tar":
            path.with_name(path.name + ".tmp").write_bytes(b"half a tar")  # what a crash leaves
            raise OSError("No space left on device")
        return real(path, rows, first)

    out = tmp_path / "mix"
    build_shards(_recipe(), out, log=lambda *a: None)  # a finished build first
    monkeypatch.setattr(shards, "write_shard", flaky)
    with pytest.raises(OSError, match="No space"):
        build_shards(_recipe("seed=9"), out, log=lambda *a: None)
    assert not (out / "manifest.json").exists()
    with pytest.raises(UserError, match="not a finished shard build"):
        ShardLoader(out, 2)
    monkeypatch.setattr(shards, "write_shard", real)
    m = build_shards(_recipe("seed=9"), out, log=lambda *a: None)
    assert not list(out.glob("*.tmp"))
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [e["name"] for e in m["shards"]]
    verify_shards(out)


def test_damaged_folders_exit_2_naming_the_shard(built, tmp_path, cli):
    src, m = built
    victim = m["shards"][1]["name"]

    def fresh(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    corrupt = fresh("corrupt")
    data = bytearray((corrupt / victim).read_bytes())
    data[2000] ^= 0xFF
    (corrupt / victim).write_bytes(bytes(data))
    r = cli("data", "verify", str(corrupt))
    assert r.returncode == 2 and victim in r.stderr and "corrupt" in r.stderr and "Traceback" not in r.stderr

    truncated = fresh("truncated")
    (truncated / victim).write_bytes((truncated / victim).read_bytes()[:5000])
    r = cli("data", "manifest", str(truncated))
    assert r.returncode == 2 and victim in r.stderr and "truncated" in r.stderr

    # the same checks through the API (each CLI run pays the torch import of webdataset)
    missing = fresh("missing")
    (missing / victim).unlink()
    with pytest.raises(UserError, match=f"shard {victim} .* is missing"):
        verify_shards(missing)

    mismatch = fresh("mismatch")
    man = json.loads((mismatch / "manifest.json").read_text())
    man["shards"][1]["sequences"] += 1
    man["num_sequences"] += 1
    (mismatch / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UserError, match=f"shard {victim} .* the manifest says"):
        verify_shards(mismatch)

    # the loader reports the same when it reaches the shard
    with pytest.raises(UserError, match=victim):
        loader = ShardLoader(corrupt, 40, seed=0)
        for _ in range(m["num_sequences"] // 40 + 1):
            next(iter(loader))
    assert read_manifest(src)["num_sequences"] == m["num_sequences"]  # the original is untouched


def test_cli_build_and_manifest_table(tmp_path, cli):
    out = tmp_path / "cli"
    r = cli("data", "build", str(RECIPE), *SMALL, "--output-dir", str(out))  # the old spelling, for one release
    assert r.returncode == 0, r.stderr
    assert "--output-dir is deprecated, use --out" in r.stderr and (out / "manifest.json").is_file()
    assert "echo_tg" in r.stdout and "share" in r.stdout
    r = cli("data", "manifest", str(out), "--no-verify")
    assert r.returncode == 0 and "echo_omi1" in r.stdout and "0.5" in r.stdout
    r = cli("data", "build", str(RECIPE), "seq_length=oops")
    assert r.returncode == 2 and "seq_length" in r.stderr


def test_loader_runs_inside_a_multi_process_launch(built, monkeypatch):
    """torchrun/srun set RANK/WORLD_SIZE; webdataset must not refuse to read (we split ranks)."""
    out, _ = built
    plain = next(iter(ShardLoader(out, 2, dp_rank=1, dp_size=2, seed=5)))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    launched = next(iter(ShardLoader(out, 2, dp_rank=1, dp_size=2, seed=5)))
    assert np.array_equal(plain.numpy(), launched.numpy())
