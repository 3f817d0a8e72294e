"""Row streams of one mixture source, read lazily and restartable at a row number.

A source's rows come from one of:

- a local file: ``.jsonl`` / ``.test`` / ``.json`` (JSON lines, or one JSON list),
  ``.jsonl.gz`` / ``.json.gz``, ``.parquet``, ``.arrow`` (an Arrow IPC stream or file,
  as `datasets` caches them);
- a local folder: a `datasets` ``save_to_disk`` folder (``state.json`` +
  ``data-*.arrow``), or any folder of such files (e.g. a downloaded hub snapshot; a
  subfolder named after the hub config is preferred, then files whose name holds the
  split), read in sorted order;
- the Hugging Face hub: first the local hub cache (``huggingface_hub`` snapshot, read as
  a folder), then ``datasets.load_dataset(..., streaming=True)``.

Nothing is materialised: every reader yields one row at a time, and `rows(start)`
starts at raw row number `start` (jsonl skips lines without parsing them; parquet and
arrow skip whole record batches), which is how an interrupted shard build resumes.

Each raw row becomes one `Item`: a document text, a row the source's filter drops
(``text is None``), or a bad row (``bad`` names the problem: malformed JSON, a missing
field, a value that is not a string) with `where` = ``file:line`` for the error message.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from echo_nemo.errors import UserError

BAD_KINDS = ("bad_json", "missing_field", "not_text")
_FILE_SUFFIXES = (".jsonl", ".json", ".test", ".jsonl.gz", ".json.gz", ".parquet", ".arrow")
_LOCAL_HINT = ("set the source's `path` to a local copy: a .jsonl, .jsonl.gz, .parquet or .arrow file, a "
               "`save_to_disk` folder, or a folder of such files such as a downloaded hub snapshot "
               "(`huggingface-cli download --repo-type dataset ID --local-dir DIR`)")


@dataclass(frozen=True)
class Item:
    """One raw row: a document (`text`), a filtered row (text None, bad None) or a bad row."""

    text: str | None
    bad: str | None = None  # one of BAD_KINDS
    where: str = ""
    message: str = ""


def _suffix(p: Path) -> str:
    name = p.name.lower()
    return next((s for s in (".jsonl.gz", ".json.gz") if name.endswith(s)), p.suffix.lower())


# ----------------------------------------------------------------------------- raw rows: (where, row | exc)
SKIPPED = object()  # a row outside this reader's `part` (see RowSource.rows): not parsed


def _mine(i: int, part: tuple[int, int] | None) -> bool:
    return part is None or i % part[1] == part[0]


def _json_lines(path: Path, start: int, part: tuple[int, int] | None = None
                ) -> Generator[tuple[str, object], None, int]:
    """(file:line, parsed row or the JSONDecodeError) of every non-empty line from row `start`;
    returns the file's row count."""
    opener = gzip.open if _suffix(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        head = f.read(1)
        f.seek(0)
        if head == "[":  # one JSON list: small files only (the shared TinyGSM sample)
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: not valid JSON ({e})") from None
            if not isinstance(rows, list):
                raise UserError(f"{path}: expected JSON lines or one JSON list of rows")
            for i, row in enumerate(rows[start:], start):
                yield f"{path} row {i}", row if _mine(i, part) else SKIPPED
            return len(rows)
        count = 0
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            count += 1
            if count <= start:  # resume: skipped lines are not parsed
                continue
            if not _mine(count - 1, part):
                yield f"{path}:{lineno}", SKIPPED
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", e
        return count


def _arrow_batches(path: Path):  # noqa: ANN202 - pyarrow record batches of a file
    suffix = _suffix(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # parquet/arrow sources only (~0.5 s to import)

        yield from pq.ParquetFile(path).iter_batches(batch_size=1024)
        return
    import pyarrow as pa  # arrow sources only

    with open(path, "rb") as f:
        try:
            reader = pa.ipc.open_stream(f)
        except pa.ArrowInvalid:
            f.seek(0)
            file_reader = pa.ipc.open_file(f)
            for i in range(file_reader.num_record_batches):
                yield file_reader.get_batch(i)
            return
        yield from reader


def _table_rows(path: Path, start: int, part: tuple[int, int] | None = None
                ) -> Generator[tuple[str, object], None, int]:
    seen = 0
    for b, batch in enumerate(_arrow_batches(path)):
        if seen + batch.num_rows <= start:  # skip whole batches without converting them
            seen += batch.num_rows
            continue
        if not _mine(b, part):  # a part is whole batches (converting them is the cost)
            for i in range(max(start, seen), seen + batch.num_rows):
                yield f"{path} row {i}", SKIPPED
            seen += batch.num_rows
            continue
        rows = batch.to_pylist()
        for i, row in enumerate(rows[max(start - seen, 0):], max(start, seen)):
            yield f"{path} row {i}", row
        seen += batch.num_rows
    return seen


def _file_rows(path: Path, start: int, part: tuple[int, int] | None = None
               ) -> Generator[tuple[str, object], None, int]:
    """Rows of one file from row `start`; returns the file's row count."""
    if _suffix(path) in (".parquet", ".arrow"):
        return (yield from _table_rows(path, start, part))
    return (yield from _json_lines(path, start, part))


def _row_count(path: Path) -> int | None:
    """Rows of a parquet/arrow file from its metadata (None for JSON: it must be read)."""
    if _suffix(path) == ".parquet":
        import pyarrow.parquet as pq  # parquet sources only

        return pq.ParquetFile(path).metadata.num_rows
    if _suffix(path) == ".arrow":
        return sum(b.num_rows for b in _arrow_batches(path))
    return None


def folder_files(folder: Path, config: str | None = None, split: str | None = None) -> list[Path]:
    """The data files of a local folder, sorted: a `save_to_disk` folder's arrow files, else
    the files under `folder/config` (if that subfolder exists), narrowed to names holding
    `split` when some do."""
    state = folder / "state.json"
    if state.is_file():  # datasets' save_to_disk layout
        try:
            files = [folder / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (KeyError, json.JSONDecodeError) as e:
            raise UserError(f"{state}: not a `datasets` save_to_disk state file ({e})") from None
        return files
    if (folder / "dataset_dict.json").is_file():  # a DatasetDict: one folder per split
        sub = folder / (split or "train")
        if not sub.is_dir():
            raise UserError(f"{folder} is a saved DatasetDict without split {split!r}")
        return folder_files(sub)
    root = folder / config if config and (folder / config).is_dir() else folder
    files = sorted(p for p in root.rglob("*") if p.is_file() and _suffix(p) in _FILE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if split:
        named = [p for p in files if split in p.relative_to(root).as_posix()]
        files = named or files
    if not files:
        raise UserError(f"no data files ({', '.join(_FILE_SUFFIXES)}) under {str(root)!r}")
    return files


class RowSource:
    """The raw rows of one source (local files or the hub), restartable at a row number."""

    def __init__(self, name: str, files: list[Path] | None = None, hub: tuple[str, str | None, str] | None = None):
        self.name, self.files, self.hub = name, files, hub

    @property
    def label(self) -> str:
        if self.files:
            return str(self.files[0]) if len(self.files) == 1 else f"{self.files[0].parent} ({len(self.files)} files)"
        return f"hub:{self.hub[0]}"

    def rows(self, start: int = 0, part: tuple[int, int] | None = None) -> Iterator[tuple[str, object]]:
        """(where, row) from raw row `start` on; a row is a dict, or an exception for bad JSON.
        `part=(k, n)`: only every n-th row of each file (JSON lines) or every n-th record batch
        (parquet/arrow) from the k-th is parsed, the others come as SKIPPED: n processes
        reading parts k = 0..n-1 together see every row once (the parallel counting pass)."""
        if self.files is None:
            assert part is None, "a hub stream is read whole (parts are for local files)"
            yield from _hub_stream(self.hub, start)
            return
        seen = 0
        for path in self.files:
            if seen < start:  # whole files before `start` are skipped by their metadata when it tells
                count = _row_count(path)
                if count is not None and seen + count <= start:
                    seen += count
                    continue
            seen += yield from _file_rows(path, max(start - seen, 0), part)

    def size(self) -> int | None:
        """Raw rows when metadata tells (parquet/arrow, hub split info), else None."""
        if self.files is None:
            return None
        counts = [_row_count(p) for p in self.files]
        return None if None in counts else sum(counts)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE as set now: `datasets` reads them once at import
    and, set later, would retry the network until its timeouts instead."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_stream(hub: tuple[str, str | None, str], start: int) -> Iterator[tuple[str, object]]:
    import datasets  # the hub only (seconds to import)

    hf_id, config, split = hub
    if hub_offline():
        raise UserError(f"{hf_id} (config {config}, split {split}) is not in the local hub cache and "
                        f"HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set. To build offline, {_LOCAL_HINT}")
    try:
        ds = datasets.load_dataset(hf_id, name=config, split=split, streaming=True)
    except Exception as e:  # no network, unknown id: bad input from the user's point of view
        raise UserError(
            f"could not stream {hf_id} (config {config}, split {split}) from the Hugging Face hub: "
            f"{type(e).__name__}: {str(e)[:200]}. To build offline, {_LOCAL_HINT}"
        ) from None
    for i, row in enumerate(ds.skip(start) if start else ds, start):
        yield f"{hf_id} row {i}", row


def hub_snapshot(hf_id: str) -> Path | None:
    """The local hub cache's snapshot folder of dataset `hf_id`, or None (no network used)."""
    try:
        from huggingface_hub import snapshot_download  # hub sources only

        # the cache folder is read from the environment now, not when huggingface_hub was imported
        cache = os.environ.get("HF_HUB_CACHE") or None
        return Path(snapshot_download(hf_id, repo_type="dataset", local_files_only=True, cache_dir=cache))
    except Exception:  # not cached (or no huggingface_hub): the caller streams from the hub
        return None


def open_rows(name: str, path: str | None, hub: tuple[str, str | None, str] | None,
              local_name: str | None = None) -> RowSource:
    """The rows of source `name`: `path` (file or folder), else the hub cache, else the hub."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir() and local_name and (p / local_name).is_file():
            return RowSource(name, [p / local_name])
        if p.is_dir():
            return RowSource(name, folder_files(p, hub[1] if hub else None, hub[2] if hub else None))
        if not p.is_file():
            raise UserError(f"source {name!r}: data file not found: {path!r} (expected a jsonl, jsonl.gz, "
                            "parquet or arrow file, or a folder of them" +
                            (f", or a folder containing {local_name!r})" if local_name else ")"))
        return RowSource(name, [p])
    if hub is None:
        raise UserError(f"source {name!r} has no hub dataset; {_LOCAL_HINT}")
    snapshot = hub_snapshot(hub[0])
    if snapshot is not None:
        try:
            return RowSource(name, folder_files(snapshot, hub[1], hub[2]))
        except UserError:  # a snapshot without data files (e.g. only its README): stream instead
            pass
    return RowSource(name, None, hub)
