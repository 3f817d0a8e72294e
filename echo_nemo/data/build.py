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
from typing import Any

import numpy as np
from tqdm import tqdm

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
from echo_nemo.data.sources import source_items, source_rows
from echo_nemo.data.streams import BAD_KINDS, RowSource
from echo_nemo.errors import UserError
from echo_nemo.tokenizer import load_tokenizer

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
    """Build (or confirm up to date, or resume) the shards of `recipe`; returns the manifest.

    Phases: the up-to-date check, the build state (resumed or fresh), the source plans,
    the stream through the tokenizer processes into shards, the manifest."""
    t0 = time.perf_counter()
    recipe.validate()
    out = Path(output_dir or recipe.output_dir)
    tok = load_tokenizer(recipe.tokenizer)
    fingerprint = recipe_fingerprint(recipe, os.path.join(tok.path, "tokenizer.json"))
    old = None if force else _up_to_date(out, fingerprint)
    if old is not None:
        log(f"{out} is up to date ({old['num_sequences']} sequences); use --force to rebuild")
        return old
    state, resumed = _open_state(out, fingerprint, force)
    plans = plan_sources(recipe, log, state.data.get("counts") if resumed else None)
    state.data["counts"] = [p.n for p in plans]
    tok_dir = _copy_tokenizer(tok, out)
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    run = _Run.start(recipe, len(plans), state, resumed, dtype)
    if resumed:
        log(f"resuming {out} at block {run.block}: {len(run.entries)} shards already written")
    bad = _stream_into_shards(recipe, plans, run, tok_dir, tok.eos_id)
    run.finish(recipe)
    manifest = _manifest(recipe, tok, tok_dir, fingerprint, plans, run, bad)
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    log(f"wrote {len(run.entries)} shards, {run.rows_done} sequences of {recipe.seq_length + 1} tokens to {out} "
        f"in {time.perf_counter() - t0:.1f} s")
    return manifest


def _up_to_date(out: Path, fingerprint: str) -> dict | None:
    """The manifest of a finished build of the same content in `out`, else None."""
    if not (out / MANIFEST).is_file():
        return None
    try:
        old = read_manifest(out)
    except UserError:
        return None
    return old if old.get("fingerprint") == fingerprint else None


def _open_state(out: Path, fingerprint: str, force: bool) -> tuple[_State, bool]:
    """(the build state, whether it resumes an interrupted build of the same content). A
    fresh build first removes everything of an older one (readers refuse the folder)."""
    state = _State(out, fingerprint)
    if not force and state.load() and state.data["checkpoint"] is not None:
        return state, True
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    for stale in list(out.glob("shard-*.tar")) + list(out.glob("*.tmp")):
        stale.unlink()
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    shutil.rmtree(out / "tokenizer", ignore_errors=True)
    return _State(out, fingerprint), False


@dataclass
class _Run:
    """Where a build stands: the readers, per-source counters, the current block, and rows
    on their way into shard files (`pending`: fewer than one shard's rows; `entries`: the
    manifest entries of the shards written, the same list the build state saves)."""

    state: _State
    per: int  # sequences per shard
    dtype: type
    readers: list[Reader]
    tokens: np.ndarray  # per source
    docs: np.ndarray
    unique: np.ndarray
    block: int
    rows_done: int
    padding: int
    pending: np.ndarray
    tail: np.ndarray  # concat: the tokens cut off the last block, carried into the next
    bar: Any = None  # the progress bar: told which shard is being written

    @classmethod
    def start(cls, recipe: DataRecipe, k: int, state: _State, resumed: bool, dtype: type) -> _Run:
        """From the state's last block checkpoint, or from nothing."""
        per, width = recipe.sequences_per_shard, recipe.seq_length + 1
        ck = state.data["checkpoint"] if resumed else None
        if ck:
            tokens, docs, unique = (np.asarray(ck[key], dtype=np.int64) for key in ("tokens", "documents", "unique"))
            pending, tail = state.arrays()
            return cls(state, per, dtype, [Reader(**r) for r in ck["readers"]], tokens, docs, unique,
                       ck["block"], ck["rows"], ck["padding"], pending, tail)
        tokens, docs, unique = (np.zeros(k, dtype=np.int64) for _ in range(3))
        return cls(state, per, dtype, [Reader() for _ in range(k)], tokens, docs, unique, 0, 0, 0,
                   np.zeros((0, width), dtype), np.zeros(0, dtype))

    @property
    def entries(self) -> list[dict]:
        return self.state.data["shards"]

    def emit(self, rows: np.ndarray) -> None:
        """rows -> pending -> full shards."""
        self.pending = np.concatenate([self.pending, rows.astype(self.dtype)])
        while len(self.pending) >= self.per:
            self.write(self.pending[: self.per])
            self.pending = self.pending[self.per:]

    def write(self, rows: np.ndarray) -> None:
        """The next shard, unless the interrupted build this one resumes wrote it already
        (the same rows by construction)."""
        s = self.rows_done // self.per
        path = self.state.dir.parent / f"shard-{s:05d}.tar"
        if not (s < len(self.entries) and path.is_file() and path.stat().st_size == self.entries[s]["bytes"]):
            self.bar.set_postfix_str(f"writing shard {s}", refresh=True)
            del self.entries[s:]
            self.entries.append(write_shard(path, rows, self.rows_done))
            self.state.save()
        self.rows_done += len(rows)

    def pack(self, recipe: DataRecipe, block: int, chunks: list, eos: int) -> None:
        """Shuffle and pack one block's tokenized chunks into rows and emit them."""
        self.bar.set_postfix_str(f"shuffle + pack block {block}", refresh=True)
        rows, self.tail, pad = _block_rows(recipe, block, *map(np.concatenate, zip(*chunks)), self.tail, eos)
        self.padding += pad
        self.emit(rows)

    def checkpoint(self, block: int, snapshot: list[dict]) -> None:
        self.state.checkpoint({"block": block, "readers": snapshot, "tokens": self.tokens.tolist(),
                               "documents": self.docs.tolist(), "unique": self.unique.tolist(),
                               "rows": self.rows_done, "padding": self.padding}, self.pending, self.tail)

    def finish(self, recipe: DataRecipe) -> None:
        """The last, partial shard; shards beyond the end (of a longer earlier build) forgotten."""
        if len(self.pending):
            self.write(self.pending)
        if self.rows_done == 0:
            raise UserError(f"data recipe {recipe.name!r}: the mixture has {len(self.tail)} tokens, fewer than "
                            f"one sequence of seq_length + 1 = {recipe.seq_length + 1}; add documents or lower "
                            f"seq_length")
        del self.entries[-(-self.rows_done // self.per):]


def _stream_into_shards(recipe: DataRecipe, plans: list[SourcePlan], run: _Run, tok_dir: Path, eos: int
                        ) -> list[dict[str, int]]:
    """Tokenize the mixture chunk by chunk, pack each block and write its shards, with a
    checkpoint after each block; returns each source's bad-row counts: all of them once the
    sources are read to the end; for a --max-tokens prefix, those before the chunk it
    stopped in (where reading stood then, whatever ran ahead)."""
    total_picks = sum(p.total for p in plans)
    picked = sum(r.picks for r in run.readers)
    made = int(run.tokens.sum())
    run.bar = tqdm(desc=f"build {recipe.name}", unit="tok", unit_scale=True, mininterval=0.5,
                   total=recipe.max_tokens, initial=made, smoothing=0.1)
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    stopped = False
    with Workers(recipe.num_workers, str(tok_dir)) as workers:
        stream = _mixture(recipe, plans, run.readers, run.block)
        for (b, _, srcs, firsts, snapshot, ends), (flat, lengths) in workers.map_ordered(encode_chunk, stream):
            srcs_a = np.asarray(srcs, dtype=np.int32)
            if recipe.max_tokens is not None and made + int(lengths.sum()) >= recipe.max_tokens:
                # the prefix ends inside this chunk: keep documents until the budget is reached
                keep = int(np.searchsorted(np.cumsum(lengths), recipe.max_tokens - made)) + 1
                flat, lengths = flat[: int(lengths[:keep].sum())], lengths[:keep]
                srcs_a, firsts, stopped = srcs_a[:keep], firsts[:keep], True
            np.add.at(run.tokens, srcs_a, lengths.astype(np.int64))
            np.add.at(run.docs, srcs_a, 1)
            np.add.at(run.unique, srcs_a[np.asarray(firsts, dtype=bool)], 1)
            picked += len(lengths)
            made += int(lengths.sum())
            chunks.append((flat, lengths, srcs_a))
            if recipe.max_tokens is None and picked:  # the ETA of the whole mixture, by documents
                run.bar.total = int(made / picked * total_picks)
            run.bar.update(int(lengths.sum()))
            if not ends and not stopped:
                continue
            run.pack(recipe, b, chunks, eos)
            chunks = []
            run.bar.set_postfix_str(f"{run.rows_done // run.per} shards written", refresh=True)
            if stopped:
                break
            run.checkpoint(b + 1, snapshot)
        if chunks:  # the last, partial block
            run.pack(recipe, b, chunks, eos)
    run.bar.close()
    return [r["bad"] for r in snapshot] if stopped else [r.bad for r in run.readers]


def _manifest(recipe: DataRecipe, tok, tok_dir: Path, fingerprint: str, plans: list[SourcePlan],  # noqa: ANN001
              run: _Run, bad: list[dict[str, int]]) -> dict:
    """manifest.json: the shards, their format and tokenizer, and per-source documents,
    tokens, shares and bad rows."""
    width = recipe.seq_length + 1
    shares = source_shares(run.tokens.tolist())
    return {
        "format": FORMAT,
        "name": recipe.name,
        "seq_length": recipe.seq_length,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "tokenizer": recipe.tokenizer if recipe.tokenizer and not Path(recipe.tokenizer).exists() else tok.path,
        "tokenizer_dir": "tokenizer",
        "tokenizer_sha256": sha256_file(tok_dir / "tokenizer.json"),
        "dtype": np.dtype(run.dtype).name,
        "num_sequences": int(run.rows_done),
        "num_tokens": int(run.rows_done * width),
        "packing": recipe.packing,
        "dropped_tokens": int(len(run.tail)),
        "padding_tokens": int(run.padding),
        "seed": recipe.seed,
        "shuffle_buffer": recipe.shuffle_buffer,
        "max_tokens": recipe.max_tokens,
        "fingerprint": fingerprint,
        "sources": [
            {"name": p.spec.name, "repeat": p.spec.repeat, "unique_documents": int(run.unique[i]),
             "documents": int(run.docs[i]), "tokens": int(run.tokens[i]), "share": shares[i],
             "bad_rows": {kind: int(c) for kind, c in bad[i].items()}}
            for i, p in enumerate(plans)
        ],
        "shards": run.entries,
    }
