"""Packing and shard files: the pieces `echo-nemo data build` (build.py) streams through.

- ``concat`` (Megatron's way, for long web documents): documents joined into one token
  stream and cut into rows of seq_length + 1 (the tail that does not fill a row is
  dropped and counted);
- ``best_fit`` (for short documents): no document is cut unless it is longer than a row;
  each goes whole into the fullest row it fits (best-fit decreasing) and the rest of a row
  is EOS padding, which the training loss skips. Cutting a ~120-token echo-lab document
  puts its solution at the start of the next row without its question, and the model
  learns to write numbers it cannot have read (measured: CHANGELOG.md, packing).

Each ``shard-NNNNN.tar`` is written to a temporary name first and renamed when complete,
so a shard that exists is whole.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import io
import itertools
import os
import signal
import tarfile
from collections import deque
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from echo_nemo.config import to_yaml
from echo_nemo.data.config import DataRecipe
from echo_nemo.data.loader import sha256_file
from echo_nemo.tokenizer import load_tokenizer

_WORKER_TOK = None


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the build process dies, even by SIGKILL (a pool
    worker would otherwise wait forever on its task queue). Elsewhere: nothing."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _init_worker(tokenizer_path: str) -> None:
    # One tokenizer per process; its own thread pool would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _die_with_parent()
    global _WORKER_TOK
    _WORKER_TOK = load_tokenizer(tokenizer_path)


def encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(all ids of the chunk with EOS after each document, document lengths): two arrays
    cross the process boundary instead of one object per document."""
    tok = _WORKER_TOK
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    ids = tok.encode_batch(texts)
    for x in ids:
        x.append(tok.eos_id)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    # chain in C: a Python generator over every token cost ~7% of the build
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


class Workers:
    """A fork pool of `n` tokenizer processes, or in-process work when n == 1."""

    def __init__(self, n: int, tokenizer_path: str) -> None:
        # webdataset imports torch (seconds): loaded by a build only, once here before the
        # fork so that the workers inherit it
        import webdataset  # noqa: F401

        self.n = n
        self.pool = get_context("fork").Pool(n, _init_worker, (tokenizer_path,)) if n > 1 else None
        if self.pool is None:
            _init_worker(tokenizer_path)

    def map_ordered(self, fn, items: Iterator[tuple]) -> Iterator[tuple]:  # noqa: ANN001
        """(item, fn(item[1])) in input order, with at most 2n + 2 tasks in flight: the input
        is read only as fast as results are taken, so memory stays bounded (Pool.imap would
        read its whole input ahead)."""
        if self.pool is None:
            for item in items:
                yield item, fn(item[1])
            return
        flight: deque = deque()
        for item in items:
            flight.append((item, self.pool.apply_async(fn, (item[1],))))
            if len(flight) > 2 * self.n + 1:
                head, res = flight.popleft()
                yield head, res.get()
        while flight:
            head, res = flight.popleft()
            yield head, res.get()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            # terminate also on a normal exit: a --max-tokens build leaves tasks it no longer needs
            self.pool.terminate()
            self.pool.join()


def pack(docs: list[np.ndarray], width: int) -> tuple[np.ndarray, int]:
    """Join documents and cut into rows of `width` tokens; returns (rows, dropped tail)."""
    stream = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint16)
    n = len(stream) // width
    return stream[: n * width].reshape(n, width), len(stream) - n * width


def pack_best_fit(docs: list[np.ndarray], width: int, pad_id: int, seed: int, block: int = 0
                  ) -> tuple[np.ndarray, int]:
    """Whole documents into rows of `width` tokens, padded with `pad_id`; returns (rows, padding).

    Best-fit decreasing: longest first, each into the open row with the least room that
    still holds it, else a new row. A document longer than `width` gives full rows of its
    own first. The rows, and the documents inside each row, are then shuffled (seed
    (seed, 2), or (seed, 2, block) for a later block of a streaming build), so row order
    carries no length signal.
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
    rng = np.random.default_rng([seed, 2] + ([block] if block else []))
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
    import webdataset as wds  # imports torch (seconds): loaded by a build only

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


def recipe_fingerprint(recipe: DataRecipe, tokenizer_file: str) -> str:
    """Hash of everything that determines the shards' content."""
    # where the shards go and how many processes make them do not change their content
    content = dataclasses.replace(recipe, output_dir="", num_workers=1)
    h = hashlib.sha256(to_yaml(content).encode())
    h.update(sha256_file(tokenizer_file).encode())
    return h.hexdigest()

