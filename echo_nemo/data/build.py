"""`echo-nemo data build`: stream a mixture through tokenizer processes into packed shards.

Pipeline (memory bounded by the shuffle buffer, never by the corpus):

1. **Plan.** Each source's documents n_i are known (echo-lab: from its config; a
   file/hub source: one counting pass, or the recipe's `documents`), so its repeat
   factor gives P_i = floor(r_i) * n_i + extra_i picks, the extra ones a seeded subsample
   (`mixtures.subsample_mask`). Whole copies re-read the source; nothing is held.
2. **Interleave.** The mixture is one stream of documents: the next comes from the source
   whose share of its own picks is furthest behind, (picks_i + 1/2) / P_i smallest
   (`mixtures.interleave`), so every stretch of the stream, and every `--max-tokens`
   prefix, holds the sources in their target proportions.
3. **Tokenize.** Chunks of documents go to `num_workers` processes (EOS appended to each
   document); results are taken back in submission order with a bounded number in
   flight, so the output is the same for any worker count.
4. **Shuffle and pack in blocks.** The stream is cut into blocks of `shuffle_buffer`
   documents. A block is put in canonical order (by source, then stream order), permuted
   with seed (seed, 1[, block]) and packed (`concat` carries its cut tail into the next
   block; `best_fit` packs the block's whole documents, rows shuffled with seed
   (seed, 2[, block])). A mixture no larger than one block is therefore shuffled and
   packed exactly like the former in-memory build (the echo-lab recipes set a buffer
   larger than their corpus, so the quickstart's shards are unchanged).
5. **Write.** Rows fill ``shard-NNNNN.tar`` files, each written to a temporary name and
   renamed when complete; ``manifest.json`` (exact per-source documents, tokens, shares
   and bad-row counts) comes last.

The loader then shuffles shard order and the order inside shards every epoch (loader.py),
the webdataset way: the build's block shuffle mixes documents across sources and within
a buffer; the loader's shard-level shuffle mixes across the whole corpus.

Resume. After each block, ``.build/state.json`` records every source's reader position
(pass, raw row, document), its document count, the counters, the concat tail and the
rows not yet in a shard; after each shard, its entry. A build killed at any moment (even SIGKILL) rerun
with the same recipe restarts from the last block boundary, keeps the shards already
complete and ends with shards and manifest byte-identical to an uninterrupted build.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from echo_nemo.data.config import DataRecipe, SourceSpec
from echo_nemo.data.loader import FORMAT, MANIFEST, read_manifest, sha256_file
from echo_nemo.data.mixtures import interleave, repeat_counts, source_shares, subsample_mask
from echo_nemo.data.shards import (
    Workers,
    encode_chunk,
    pack_best_fit,
    recipe_fingerprint,
    write_shard,
)
from echo_nemo.data.streams import BAD_KINDS, RowSource
from echo_nemo.errors import UserError

STATE_DIR = ".build"
# A tokenizer task: up to 1024 documents or 1M characters (larger tasks mean fewer
# hand-offs between processes; the chunking never changes the output)
CHUNK, CHUNK_CHARS = 1024, 1 << 20


@dataclass
class Reader:
    """Where one source's pick stream stands (JSON-able: the resume state)."""

    copy: int = 0  # pass over the source: 0..full-1 whole copies, then the subsample pass
    row: int = 0  # next raw row of the pass
    doc: int = 0  # next document index of the pass
    picks: int = 0  # documents emitted into the mixture
    bad: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_KINDS, 0))


@dataclass
class SourcePlan:
    spec: SourceSpec
    rows: RowSource | None  # None: echo-lab
    n: int  # documents of one pass
    full: int  # whole copies
    mask: np.ndarray | None  # the subsample of the fractional part

    @property
    def total(self) -> int:
        return self.full * self.n + (int(self.mask.sum()) if self.mask is not None else 0)


def _bad(recipe: DataRecipe, spec: SourceSpec, where: str, message: str) -> None:
    if recipe.on_bad_row == "error":
        raise UserError(f"source {spec.name!r}: bad row at {where}: {message} "
                        f"(on_bad_row: skip would count and skip it)")


def _count_part(args: tuple) -> tuple[int, tuple | None]:
    """Documents in one part of a source (RowSource.rows) and its first bad row
    (ordinal, where, message), in a counting process."""
    from echo_nemo.data.sources import source_items

    spec, echolab, rows, part = args
    n, bad = 0, None
    for i, item in enumerate(source_items(spec, echolab, rows=rows, part=part)):
        if item.bad:
            bad = bad or (i, item.where, item.message)
        elif item.text is not None:
            n += 1
    return n, bad


def _count(recipe: DataRecipe, spec: SourceSpec, rows: RowSource | None, log) -> int:  # noqa: ANN001
    """Documents of one pass over a source (bad rows raise here under on_bad_row: error).

    With several workers and local files (no `limit`, which stops early), the workers count
    interleaved parts of the rows at once: parsing is the cost, and the counting pass runs
    before any tokenizing, so it would otherwise leave all but one core idle."""
    from tqdm import tqdm

    from echo_nemo.data.sources import source_items

    if rows is None:  # echo-lab: the config says how many
        n = recipe.echolab.num_background if spec.name == "echo_fm3" else recipe.echolab.num_problems
        return min(n, spec.limit) if spec.limit else n
    if spec.documents is not None:
        return spec.documents
    log(f"counting the documents of {spec.name!r} ({rows.label}); set its `documents` to skip this pass")
    w = recipe.num_workers
    if w > 1 and rows.files and spec.limit is None:
        with get_context("fork").Pool(w) as pool:
            parts = pool.map(_count_part, [(spec, recipe.echolab, rows, (k, w)) for k in range(w)])
        bad = min((b for _, b in parts if b), default=None)
        if bad:
            _bad(recipe, spec, *bad[1:])
        return sum(n for n, _ in parts)
    n = 0
    with tqdm(desc=f"count {spec.name}", unit="doc", unit_scale=True, leave=False, mininterval=1) as bar:
        for item in source_items(spec, recipe.echolab, rows=rows):
            if item.bad:
                _bad(recipe, spec, item.where, item.message)
            elif item.text is not None:
                n += 1
                bar.update()
                if spec.limit is not None and n >= spec.limit:
                    break
    return n


def plan_sources(recipe: DataRecipe, log, counts: list[int] | None = None) -> list[SourcePlan]:  # noqa: ANN001
    """Each source's plan; `counts` (documents per source, from a resumed build's state)
    skips the counting pass."""
    from echo_nemo.data.sources import source_rows

    plans = []
    for i, spec in enumerate(recipe.sources):
        rows = source_rows(spec)
        n = counts[i] if counts else _count(recipe, spec, rows, log)
        if n == 0:
            raise UserError(f"source {spec.name!r} yielded no documents (check its path / limit)")
        full, extra = repeat_counts(n, spec.repeat)
        plans.append(SourcePlan(spec, rows, n, full, subsample_mask(n, extra, recipe.seed, i)))
    return plans


def _picks(recipe: DataRecipe, plan: SourcePlan, r: Reader) -> Iterator[tuple[str, bool]]:
    """(text, first time this document is used) of one source's picks from reader `r` on;
    `r` is advanced before each yield, so it always says where the next pick starts."""
    from echo_nemo.data.sources import source_items

    while r.copy < plan.full + (plan.mask is not None):
        subsample = r.copy == plan.full
        for item in source_items(plan.spec, recipe.echolab, start=r.row, rows=plan.rows):
            r.row += 1
            if item.bad:
                if r.copy == 0:  # count each bad row once, not once per copy
                    _bad(recipe, plan.spec, item.where, item.message)
                    r.bad[item.bad] += 1
                continue
            if item.text is None:
                continue
            if r.doc >= plan.n:  # the limit (or a source that grew since it was counted)
                break
            d = r.doc
            r.doc += 1
            if subsample and not plan.mask[d]:
                continue
            r.picks += 1
            yield item.text, plan.full == 0 or r.copy == 0
        r.copy, r.row, r.doc = r.copy + 1, 0, 0


def _mixture(recipe: DataRecipe, plans: list[SourcePlan], readers: list[Reader], block: int
             ) -> Iterator[tuple[int, list[str], list[int], list[bool], list[dict], bool]]:
    """Chunks of the interleaved stream: (block, texts, sources, first-use flags, the readers
    as they stand after the chunk, whether the chunk ends its block). Chunks never straddle
    a block boundary; the snapshot is taken here because reading runs ahead of packing."""
    streams = [_picks(recipe, p, r) for p, r in zip(plans, readers)]
    totals = [p.total for p in plans]
    done = [r.picks for r in readers]
    texts, srcs, firsts = [], [], []
    in_block = chars = 0
    for i in interleave(totals, done):
        try:
            text, first = next(streams[i])
        except StopIteration:  # fewer documents than counted: the source ends here
            totals[i] = done[i]
            continue
        done[i] += 1
        texts.append(text)
        srcs.append(i)
        firsts.append(first)
        in_block, chars = in_block + 1, chars + len(text)
        ends = in_block == recipe.shuffle_buffer
        if ends or len(texts) == CHUNK or chars >= CHUNK_CHARS:
            yield block, texts, srcs, firsts, [asdict(r) for r in readers], ends
            texts, srcs, firsts, chars = [], [], [], 0
            if ends:
                in_block, block = 0, block + 1
    if texts:
        yield block, texts, srcs, firsts, [asdict(r) for r in readers], False


class _State:
    """`.build/state.json`: the last block checkpoint and the shards written since."""

    def __init__(self, out: Path, fingerprint: str) -> None:
        self.dir = out / STATE_DIR
        self.fingerprint = fingerprint
        self.data: dict = {"fingerprint": fingerprint, "checkpoint": None, "shards": []}

    def load(self) -> bool:
        try:
            data = json.loads((self.dir / "state.json").read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if data.get("fingerprint") != self.fingerprint:
            return False
        self.data = data
        return True

    def save(self) -> None:
        self.dir.mkdir(exist_ok=True)
        tmp = self.dir / "state.json.tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / "state.json")

    def checkpoint(self, ck: dict, pending: np.ndarray, tail: np.ndarray) -> None:
        """Arrays first (named by block), then the JSON that points at them."""
        self.dir.mkdir(exist_ok=True)
        name = f"block-{ck['block']:06d}.npz"
        with open(self.dir / (name + ".tmp"), "wb") as f:
            np.savez(f, pending=pending, tail=tail)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.dir / (name + ".tmp"), self.dir / name)
        old = (self.data["checkpoint"] or {}).get("arrays")
        self.data["checkpoint"] = {**ck, "arrays": name}
        self.save()
        if old and old != name:
            (self.dir / old).unlink(missing_ok=True)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.dir / self.data["checkpoint"]["arrays"]) as z:
            return z["pending"], z["tail"]


def _copy_tokenizer(tok, out: Path) -> Path:  # noqa: ANN001
    """The tokenizer's files, byte for byte, in `out/tokenizer` (a shard folder is self-contained)."""
    dest = out / "tokenizer"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = Path(tok.path) / name
        if src.is_file():
            shutil.copyfile(src, dest / name)
    return dest


def _block_rows(recipe: DataRecipe, block: int, flat: np.ndarray, lengths: np.ndarray, srcs: np.ndarray,
                tail: np.ndarray, eos: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Shuffle one block's documents and pack them: (rows, new concat tail, padding)."""
    width = recipe.seq_length + 1
    seed = [recipe.seed, 1] + ([block] if block else [])
    order = np.argsort(srcs, kind="stable")[np.random.default_rng(seed).permutation(len(srcs))]
    docs = np.split(flat, np.cumsum(lengths)[:-1])
    shuffled = [docs[i] for i in order]
    if recipe.packing == "best_fit":
        rows, padding = pack_best_fit(shuffled, width, eos, recipe.seed, block)
        return rows, tail[:0], padding
    stream = np.concatenate([tail, *shuffled])
    n = len(stream) // width
    return stream[: n * width].reshape(n, width), stream[n * width:], 0


def build_shards(recipe: DataRecipe, output_dir: str | os.PathLike | None = None, force: bool = False,
                 log=print) -> dict:  # noqa: ANN001
    """Build (or confirm up to date, or resume) the shards of `recipe`; returns the manifest."""
    from tqdm import tqdm

    from echo_nemo.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    recipe.validate()
    out = Path(output_dir or recipe.output_dir)
    tok = load_tokenizer(recipe.tokenizer)
    fingerprint = recipe_fingerprint(recipe, os.path.join(tok.path, "tokenizer.json"))
    if not force and (out / MANIFEST).is_file():
        try:
            old = read_manifest(out)
        except UserError:
            old = {}
        if old.get("fingerprint") == fingerprint:
            log(f"{out} is up to date ({old['num_sequences']} sequences); use --force to rebuild")
            return old

    state = _State(out, fingerprint)
    resumed = not force and state.load() and state.data["checkpoint"] is not None
    if not resumed:  # a fresh build: nothing of an older one may survive (readers refuse the folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)
        for stale in list(out.glob("shard-*.tar")) + list(out.glob("*.tmp")):
            stale.unlink()
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
        shutil.rmtree(out / "tokenizer", ignore_errors=True)
        state = _State(out, fingerprint)
    plans = plan_sources(recipe, log, state.data.get("counts") if resumed else None)
    state.data["counts"] = [p.n for p in plans]
    tok_dir = _copy_tokenizer(tok, out)

    width, per = recipe.seq_length + 1, recipe.sequences_per_shard
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    k = len(plans)
    ck = state.data["checkpoint"] if resumed else None
    if ck:
        readers = [Reader(**r) for r in ck["readers"]]
        tokens, docs, unique = (np.asarray(ck[key], dtype=np.int64) for key in ("tokens", "documents", "unique"))
        block, rows_done, padding = ck["block"], ck["rows"], ck["padding"]
        pending, tail = state.arrays()
        log(f"resuming {out} at block {block}: {len(state.data['shards'])} shards already written")
    else:
        readers = [Reader() for _ in plans]
        tokens, docs, unique = (np.zeros(k, dtype=np.int64) for _ in range(3))
        block, rows_done, padding = 0, 0, 0
        pending, tail = np.zeros((0, width), dtype), np.zeros(0, dtype)
    entries: list[dict] = state.data["shards"]

    def emit(rows: np.ndarray) -> None:  # rows -> pending -> full shards
        nonlocal pending, rows_done
        pending = np.concatenate([pending, rows.astype(dtype)])
        while len(pending) >= per:
            _write(pending[:per])
            pending = pending[per:]

    def _write(rows: np.ndarray) -> None:
        nonlocal rows_done
        s = rows_done // per
        path = out / f"shard-{s:05d}.tar"
        if s < len(entries) and path.is_file() and path.stat().st_size == entries[s]["bytes"]:
            pass  # written before the interrupted build stopped; the same rows by construction
        else:
            bar.set_postfix_str(f"writing shard {s}", refresh=True)
            del entries[s:]
            entries.append(write_shard(path, rows, rows_done))
            state.save()
        rows_done += len(rows)

    total_picks = sum(p.total for p in plans)
    picked = sum(r.picks for r in readers)
    made = int(tokens.sum())
    bar = tqdm(desc=f"build {recipe.name}", unit="tok", unit_scale=True, mininterval=0.5,
               total=recipe.max_tokens, initial=made, smoothing=0.1)
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    stopped = False
    with Workers(recipe.num_workers, str(tok_dir)) as workers:
        stream = _mixture(recipe, plans, readers, block)
        for (b, _, srcs, firsts, snapshot, ends), (flat, lengths) in workers.map_ordered(encode_chunk, stream):
            srcs_a = np.asarray(srcs, dtype=np.int32)
            if recipe.max_tokens is not None and made + int(lengths.sum()) >= recipe.max_tokens:
                # the prefix ends inside this chunk: keep documents until the budget is reached
                keep = int(np.searchsorted(np.cumsum(lengths), recipe.max_tokens - made)) + 1
                flat, lengths = flat[: int(lengths[:keep].sum())], lengths[:keep]
                srcs_a, firsts, stopped = srcs_a[:keep], firsts[:keep], True
            np.add.at(tokens, srcs_a, lengths.astype(np.int64))
            np.add.at(docs, srcs_a, 1)
            np.add.at(unique, srcs_a[np.asarray(firsts, dtype=bool)], 1)
            picked += len(lengths)
            made += int(lengths.sum())
            chunks.append((flat, lengths, srcs_a))
            if recipe.max_tokens is None and picked:  # the ETA of the whole mixture, by documents
                bar.total = int(made / picked * total_picks)
            bar.update(int(lengths.sum()))
            if not ends and not stopped:
                continue
            bar.set_postfix_str(f"shuffle + pack block {b}", refresh=True)
            rows, tail, pad = _block_rows(recipe, b, *map(np.concatenate, zip(*chunks)), tail, tok.eos_id)
            chunks, padding = [], padding + pad
            emit(rows)
            bar.set_postfix_str(f"{rows_done // per} shards written", refresh=True)
            if stopped:
                break
            state.checkpoint({"block": b + 1, "readers": snapshot, "tokens": tokens.tolist(),
                              "documents": docs.tolist(), "unique": unique.tolist(),
                              "rows": rows_done, "padding": padding}, pending, tail)
        if chunks:  # the last, partial block
            bar.set_postfix_str(f"shuffle + pack block {b}", refresh=True)
            rows, tail, pad = _block_rows(recipe, b, *map(np.concatenate, zip(*chunks)), tail, tok.eos_id)
            padding += pad
            emit(rows)
    bar.close()
    if len(pending):
        _write(pending)
    if rows_done == 0:
        raise UserError(f"data recipe {recipe.name!r}: the mixture has {len(tail)} tokens, fewer than one "
                        f"sequence of seq_length + 1 = {width}; add documents or lower seq_length")
    del entries[-(-rows_done // per):]

    # bad rows: all of them once the sources are read to the end; for a --max-tokens prefix,
    # those before the chunk it stopped in (where reading stood then, whatever ran ahead)
    bad = [r["bad"] for r in snapshot] if stopped else [r.bad for r in readers]
    shares = source_shares(tokens.tolist())
    manifest = {
        "format": FORMAT,
        "name": recipe.name,
        "seq_length": recipe.seq_length,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "tokenizer": recipe.tokenizer if recipe.tokenizer and not Path(recipe.tokenizer).exists() else tok.path,
        "tokenizer_dir": "tokenizer",
        "tokenizer_sha256": sha256_file(tok_dir / "tokenizer.json"),
        "dtype": np.dtype(dtype).name,
        "num_sequences": int(rows_done),
        "num_tokens": int(rows_done * width),
        "packing": recipe.packing,
        "dropped_tokens": int(len(tail)),
        "padding_tokens": int(padding),
        "seed": recipe.seed,
        "shuffle_buffer": recipe.shuffle_buffer,
        "max_tokens": recipe.max_tokens,
        "fingerprint": fingerprint,
        "sources": [
            {"name": p.spec.name, "repeat": p.spec.repeat, "unique_documents": int(unique[i]),
             "documents": int(docs[i]), "tokens": int(tokens[i]), "share": shares[i],
             "bad_rows": {kind: int(c) for kind, c in bad[i].items()}}
            for i, p in enumerate(plans)
        ],
        "shards": entries,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    log(f"wrote {len(entries)} shards, {rows_done} sequences of {width} tokens to {out} "
        f"in {time.perf_counter() - t0:.1f} s")
    return manifest

