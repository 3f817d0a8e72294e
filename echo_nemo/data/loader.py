"""Read packed-sequence webdataset shards: per-DP-rank batches that resume exactly.

The shard folder (written by `echo-nemo data build`) holds ``shard-NNNNN.tar`` files and
``manifest.json``. Each tar sample ``tokens.npy`` is one sequence of seq_length + 1
token ids (inputs are [:-1], labels [1:]).

Order. All ranks agree on one global stream of sequence ids: epoch e is a permutation
of the N sequences (shard order shuffled with seed (seed, e), then the order inside each
shard shuffled with seed (seed, e, shard)), and the stream is epoch 0, epoch 1, ... The
b-th micro-batch of DP rank r is the stream positions

    k = (b * dp_size + r) * micro_batch_size + j,   j = 0 .. micro_batch_size - 1,

so ranks read disjoint slices, and within every block of N positions each sequence occurs
exactly once. The state is just the number of global samples consumed, so a restore
neither repeats nor skips (and may even change dp_size if the count divides evenly).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from echo_nemo.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "echo-nemo-shards/1"


def read_manifest(shard_dir: str | os.PathLike) -> dict:
    """The manifest of a finished build, checked for the files it lists."""
    d = Path(shard_dir)
    path = d / MANIFEST
    if not d.is_dir():
        raise UserError(f"shard folder not found: {str(d)!r} (run `echo-nemo data build` first)")
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing: {str(d)!r} is not a finished shard build "
                        "(an interrupted `echo-nemo data build` leaves no manifest; run it again)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{str(path)!r} is not valid JSON: {e}") from None
    for key in ("format", "seq_length", "vocab_size", "dtype", "shards", "num_sequences"):
        if key not in m:
            raise UserError(f"{str(path)!r}: missing key {key!r} (expected a {FORMAT} manifest)")
    if m["format"] != FORMAT:
        raise UserError(f"{str(path)!r}: format {m['format']!r}, expected {FORMAT!r}")
    if sum(s["sequences"] for s in m["shards"]) != m["num_sequences"]:
        raise UserError(f"{str(path)!r}: shard sequence counts do not add up to num_sequences")
    for s in m["shards"]:
        f = d / s["name"]
        if not f.is_file():
            raise UserError(f"shard {s['name']} listed in {str(path)!r} is missing ({str(f)!r})")
        if f.stat().st_size != s["bytes"]:
            raise UserError(f"shard {s['name']} in {str(d)!r} has {f.stat().st_size} bytes, the manifest "
                            f"says {s['bytes']} (truncated or replaced; rebuild with `echo-nemo data build`)")
    return m


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_shard(shard_dir: str | os.PathLike, entry: dict, manifest: dict, verify: bool = True) -> np.ndarray:
    """All sequences of one shard as an array [sequences, seq_length + 1]; checks the
    sha256 and the shape, raising UserError naming the shard when anything is off."""
    import webdataset as wds  # imports torch (seconds): not paid by a build's manifest reads

    path = Path(shard_dir) / entry["name"]
    if verify and sha256_file(path) != entry["sha256"]:
        raise UserError(f"shard {entry['name']} in {str(shard_dir)!r} is corrupt: its sha256 does not "
                        "match the manifest (rebuild with `echo-nemo data build`)")
    width = manifest["seq_length"] + 1
    rows = []
    try:
        # nodesplitter=None: ranks are split by this loader, not by webdataset (whose
        # default refuses to run when RANK/WORLD_SIZE say there are several processes).
        ds = wds.WebDataset(str(path), shardshuffle=False, empty_check=False, nodesplitter=None).decode()
        for sample in ds:
            rows.append(np.asarray(sample["tokens.npy"]))
    except Exception as e:  # tarfile / numpy errors on a damaged file
        raise UserError(f"shard {entry['name']} in {str(shard_dir)!r} cannot be read: "
                        f"{type(e).__name__}: {e}") from None
    if len(rows) != entry["sequences"] or any(r.shape != (width,) for r in rows):
        raise UserError(f"shard {entry['name']} in {str(shard_dir)!r} holds {len(rows)} sequences, the manifest "
                        f"says {entry['sequences']} of {width} tokens")
    return np.stack(rows).astype(np.int64)


def verify_shards(shard_dir: str | os.PathLike) -> dict:
    """Check every shard against the manifest (sha256, sequences); return the manifest."""
    m = read_manifest(shard_dir)
    for entry in m["shards"]:
        read_shard(shard_dir, entry, m, verify=True)
    return m


def _perm(n: int, *seed: int) -> np.ndarray:
    return np.random.default_rng(list(seed)).permutation(n)


class ShardLoader:
    """Infinite iterator of LongTensor [micro_batch_size, seq_length + 1] for one DP rank."""

    def __init__(self, shard_dir: str | os.PathLike, micro_batch_size: int, dp_rank: int = 0,
                 dp_size: int = 1, seed: int = 0, verify: bool = True, cache_shards: int = 4) -> None:
        if micro_batch_size < 1 or not 0 <= dp_rank < dp_size:
            raise UserError(f"need micro_batch_size >= 1 and 0 <= dp_rank < dp_size, got "
                            f"{micro_batch_size}, {dp_rank}, {dp_size}")
        self.shard_dir = Path(shard_dir)
        self.manifest = read_manifest(shard_dir)
        if self.manifest["num_sequences"] < 1:
            raise UserError(f"shard folder {str(shard_dir)!r} holds no sequences (a larger corpus or a "
                            "smaller seq_length is needed)")
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.verify = verify
        self._sizes = [s["sequences"] for s in self.manifest["shards"]]
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_shards = cache_shards
        self._epoch_plan: tuple[int, np.ndarray, list[int]] | None = None
        self._inner: dict[tuple[int, int], np.ndarray] = {}  # (epoch, shard) -> order inside
        self.batches = 0  # micro-batches this rank has yielded

    # -- facts
    @property
    def seq_length(self) -> int:
        return int(self.manifest["seq_length"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def tokenizer_path(self) -> str | None:
        return self.manifest.get("tokenizer")

    @property
    def num_sequences(self) -> int:
        return int(self.manifest["num_sequences"])

    @property
    def samples_consumed(self) -> int:
        """Global samples (all ranks) consumed so far."""
        return self.batches * self.dp_size * self.micro_batch_size

    @property
    def epoch(self) -> float:
        return self.samples_consumed / self.num_sequences

    # -- order
    def _plan(self, epoch: int) -> tuple[np.ndarray, list[int]]:
        if self._epoch_plan is None or self._epoch_plan[0] != epoch:
            self._inner = {k: v for k, v in self._inner.items() if k[0] >= epoch - 1}
            order = _perm(len(self._sizes), self.seed, epoch)
            starts = np.cumsum([0] + [self._sizes[i] for i in order]).tolist()
            self._epoch_plan = (epoch, order, starts)
        return self._epoch_plan[1], self._epoch_plan[2]

    def _shard(self, idx: int) -> np.ndarray:
        if idx not in self._cache:
            entry = self.manifest["shards"][idx]
            self._cache[idx] = read_shard(self.shard_dir, entry, self.manifest, self.verify)
            while len(self._cache) > self._cache_shards:
                self._cache.popitem(last=False)
        self._cache.move_to_end(idx)
        return self._cache[idx]

    def sequence_at(self, k: int) -> np.ndarray:
        """The sequence at global stream position k."""
        epoch, i = divmod(k, self.num_sequences)
        order, starts = self._plan(epoch)
        pos = bisect.bisect_right(starts, i) - 1
        shard = int(order[pos])
        j = i - starts[pos]
        if (epoch, shard) not in self._inner:
            self._inner[(epoch, shard)] = _perm(self._sizes[shard], self.seed, epoch, shard)
        return self._shard(shard)[self._inner[(epoch, shard)][j]]

    def position_of(self, batch: int, j: int) -> int:
        return (batch * self.dp_size + self.dp_rank) * self.micro_batch_size + j

    def __iter__(self) -> Iterator[Any]:
        import torch  # the data build imports this module too, and never needs torch

        while True:
            rows = [self.sequence_at(self.position_of(self.batches, j)) for j in range(self.micro_batch_size)]
            self.batches += 1
            yield torch.from_numpy(np.stack(rows))

    def __next__(self) -> Any:
        return next(iter(self))

    # -- resume
    def state_dict(self) -> dict:
        return {"samples_consumed": self.samples_consumed, "seed": self.seed,
                "num_sequences": self.num_sequences, "seq_length": self.seq_length}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_sequences", "seq_length"):
            if state.get(key) != getattr(self, key):
                raise UserError(f"loader state does not match shard folder {str(self.shard_dir)!r}: "
                                f"{key} {state.get(key)!r} != {getattr(self, key)!r}")
        per_batch = self.dp_size * self.micro_batch_size
        consumed = int(state["samples_consumed"])
        if consumed % per_batch:
            raise UserError(f"cannot resume {consumed} consumed samples with dp_size * micro_batch_size = "
                            f"{per_batch} (not a multiple)")
        self.batches = consumed // per_batch
