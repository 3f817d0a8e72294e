"""Build webdataset shards of packed fixed-length sequences from a data recipe.

Steps (`build_shards`):
1. read each source's documents (mixtures.py applies the repeat factors),
2. tokenize them in a pool of processes, EOS appended to every document,
3. shuffle the documents deterministically (recipe seed) and pack them into sequences of
   seq_length + 1 tokens, by the recipe's `packing`:
   - ``concat`` (Megatron's way, for long web documents): join them into one token stream
     and cut it (the tail that does not fill a sequence is dropped and counted);
   - ``best_fit`` (for short documents): no document is cut unless it is longer than a
     sequence; each goes whole into the fullest sequence it fits (best-fit decreasing) and
     the rest of a sequence is EOS padding, which the training loss skips. Cutting a
     ~120-token echo-lab document puts its solution at the start of the next sequence
     without its question, and the model learns to write numbers it cannot have read
     (README: measured),
4. write ``shard-NNNNN.tar`` files, each to a temporary name first and renamed when
   complete, then ``manifest.json`` last (also atomically).

An interrupted build therefore never leaves a shard that looks complete: the old manifest
is deleted before any shard is written, so a folder without manifest is an unfinished
build, and a re-run starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from echo_nemo.data.config import DataRecipe
from echo_nemo.data.loader import FORMAT, MANIFEST, read_manifest, sha256_file
from echo_nemo.data.mixtures import expand_repeats, source_shares
from echo_nemo.errors import UserError

_WORKER_TOK = None


def _init_worker(tokenizer_path: str) -> None:
    # One tokenizer per process; its own thread pool would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _WORKER_TOK
    from echo_nemo.tokenizer import load_tokenizer

    _WORKER_TOK = load_tokenizer(tokenizer_path)


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(all ids of the chunk with EOS after each document, document lengths): two arrays
    cross the process boundary instead of one object per document."""
    tok = _WORKER_TOK
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    ids = tok.encode_batch(texts)
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((t for x in ids for t in (*x, tok.eos_id)), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class _Workers:
    """A fork pool of `n` processes (each with its own tokenizer), or in-process work when
    n == 1. Both tokenization and shard writing fan out over it."""

    def __init__(self, n: int, tokenizer_path: str) -> None:
        import webdataset  # noqa: F401  (imported once here, inherited by the forked workers)

        self.pool = get_context("fork").Pool(n, _init_worker, (tokenizer_path,)) if n > 1 else None
        if self.pool is None:
            _init_worker(tokenizer_path)

    def imap(self, fn, items):  # noqa: ANN001, ANN201 - ordered map
        return self.pool.imap(fn, items) if self.pool else map(fn, items)

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()


def tokenize_documents(texts: list[str], workers: _Workers, chunk_size: int = 512) -> list[np.ndarray]:
    """Token ids + EOS of every text, in order."""
    from tqdm import tqdm

    out: list[np.ndarray] = []
    with tqdm(total=len(texts), desc="tokenize", unit="doc", leave=False, mininterval=0.5) as bar:
        for flat, lengths in workers.imap(_encode_chunk, _chunks(texts, chunk_size)):
            out.extend(np.split(flat, np.cumsum(lengths)[:-1]))
            bar.update(len(lengths))
    return out


def pack(docs: list[np.ndarray], width: int) -> tuple[np.ndarray, int]:
    """Join documents and cut into rows of `width` tokens; returns (rows, dropped tail)."""
    stream = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint16)
    n = len(stream) // width
    return stream[: n * width].reshape(n, width), len(stream) - n * width


def pack_best_fit(docs: list[np.ndarray], width: int, pad_id: int, seed: int) -> tuple[np.ndarray, int]:
    """Whole documents into rows of `width` tokens, padded with `pad_id`; returns (rows, padding).

    Best-fit decreasing: longest first, each into the open row with the least room that
    still holds it, else a new row. A document longer than `width` gives full rows of its
    own first. The rows, and the documents inside each row, are then shuffled (seeded), so
    row order carries no length signal.
    """
    rows: list[list[np.ndarray]] = []
    pieces: list[np.ndarray] = []
    for d in docs:
        while len(d) > width:
            rows.append([d[:width]])
            d = d[width:]
        if len(d):
            pieces.append(d)
    open_rows: list[list[int]] = [[] for _ in range(width)]  # room r (1..width-1) -> rows with it
    for i in sorted(range(len(pieces)), key=lambda i: -len(pieces[i])):
        n = len(pieces[i])
        room = next((r for r in range(n, width) if open_rows[r]), None)
        if room is None:
            row, room = len(rows), width
            rows.append([])
        else:
            row = open_rows[room].pop()
        rows[row].append(pieces[i])
        if room - n > 0:
            open_rows[room - n].append(row)
    rng = np.random.default_rng([seed, 2])
    out = np.full((len(rows), width), pad_id, dtype=docs[0].dtype if docs else np.uint16)
    for j, k in enumerate(rng.permutation(len(rows))):
        parts = [rows[k][m] for m in rng.permutation(len(rows[k]))]
        flat = np.concatenate(parts)
        out[j, : len(flat)] = flat
    return out, int(out.size - sum(len(d) for d in docs))


def _npy_header(dtype: np.dtype, width: int) -> bytes:
    """The .npy header shared by every row (same dtype and shape), computed once."""
    buf = io.BytesIO()
    np.save(buf, np.zeros(width, dtype=dtype))
    return buf.getvalue()[: -width * np.dtype(dtype).itemsize]


def write_shard(path: Path, rows: np.ndarray, first_index: int) -> dict:
    """Write one tar atomically (temp file, fsync, rename); return its manifest entry.

    Each sample is `<index>.tokens.npy`: a standard .npy file of one row."""
    import webdataset as wds

    header = _npy_header(rows.dtype, rows.shape[1])
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        with wds.TarWriter(f, mtime=0, format=tarfile.USTAR_FORMAT) as sink:
            for i, row in enumerate(rows):
                sink.write({"__key__": f"{first_index + i:09d}", "tokens.npy": header + row.tobytes()})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "sequences": int(len(rows))}


def _write_job(job: tuple[str, np.ndarray, int]) -> dict:
    return write_shard(Path(job[0]), job[1], job[2])


def recipe_fingerprint(recipe: DataRecipe, tokenizer_file: str) -> str:
    """Hash of everything that determines the shards' content."""
    from echo_nemo.config import to_yaml

    # where the shards go and how many processes make them do not change their content
    content = dataclasses.replace(recipe, output_dir="", num_workers=1)
    h = hashlib.sha256(to_yaml(content).encode())
    h.update(sha256_file(tokenizer_file).encode())
    return h.hexdigest()


def build_shards(recipe: DataRecipe, output_dir: str | os.PathLike | None = None, force: bool = False,
                 log=print) -> dict:  # noqa: ANN001
    """Build (or confirm up to date) the shards of `recipe`; returns the manifest."""
    from tqdm import tqdm

    from echo_nemo.data.sources import load_documents
    from echo_nemo.tokenizer import load_tokenizer

    t0 = time.perf_counter()
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

    # 1. documents per source, in source order.
    texts: list[str] = []
    bounds = [0]
    for spec in recipe.sources:
        texts.extend(load_documents(spec, recipe.echolab))
        if len(texts) == bounds[-1]:
            raise UserError(f"source {spec.name!r} yielded no documents (check its path / limit)")
        bounds.append(len(texts))

    width = recipe.seq_length + 1
    dtype = "uint16" if tok.vocab_size <= 65535 else "uint32"
    with _Workers(recipe.num_workers, tok.path) as workers:
        # 2. tokens (+EOS) per document, then the mixture's repeats.
        encoded = tokenize_documents(texts, workers)
        per_source = [encoded[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        del texts
        picks = expand_repeats([len(d) for d in per_source], [s.repeat for s in recipe.sources], recipe.seed)

        # 3. deterministic document shuffle, then pack.
        order = np.random.default_rng([recipe.seed, 1]).permutation(len(picks))
        shuffled = [per_source[picks[i][0]][picks[i][1]] for i in order]
        dropped = padding = 0
        if recipe.packing == "best_fit":
            rows, padding = pack_best_fit(shuffled, width, tok.eos_id, recipe.seed)
        else:
            rows, dropped = pack(shuffled, width)
        del shuffled
        rows = rows.astype(dtype)
        if len(rows) == 0:
            raise UserError(f"data recipe {recipe.name!r}: the mixture has {dropped} tokens, fewer than one "
                            f"sequence of seq_length + 1 = {width}; add documents or lower seq_length")

        # 4. shards (atomic each, written in parallel), then the manifest. The old manifest
        # goes first so that a crash half way leaves a folder that readers refuse.
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)
        for stale in list(out.glob("shard-*.tar")) + list(out.glob("*.tmp")):
            stale.unlink()
        per = recipe.sequences_per_shard
        jobs = [(str(out / f"shard-{s // per:05d}.tar"), rows[s:s + per], s) for s in range(0, len(rows), per)]
        entries = list(tqdm(workers.imap(_write_job, jobs), total=len(jobs), desc="write shards",
                            unit="shard", leave=False))

    tokens_per_source = [0] * len(per_source)
    docs_per_source = [0] * len(per_source)
    for src, idx in picks:
        tokens_per_source[src] += len(per_source[src][idx])
        docs_per_source[src] += 1
    shares = source_shares(tokens_per_source)
    manifest = {
        "format": FORMAT,
        "name": recipe.name,
        "seq_length": recipe.seq_length,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "tokenizer": tok.path,
        "dtype": dtype,
        "num_sequences": int(len(rows)),
        "num_tokens": int(rows.size),
        "packing": recipe.packing,
        "dropped_tokens": int(dropped),
        "padding_tokens": int(padding),
        "seed": recipe.seed,
        "fingerprint": fingerprint,
        "sources": [
            {"name": spec.name, "repeat": spec.repeat, "unique_documents": len(per_source[i]),
             "documents": docs_per_source[i], "tokens": tokens_per_source[i], "share": shares[i]}
            for i, spec in enumerate(recipe.sources)
        ],
        "shards": entries,
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    log(f"wrote {len(entries)} shards, {len(rows)} sequences of {width} tokens to {out} "
        f"in {manifest['build_seconds']:.1f} s")
    return manifest
