"""Helpers over ../shared/data for tests in any folder (a plain module: `conftest` is
ambiguous once several conftest.py files are loaded)."""

from __future__ import annotations

from pathlib import Path

SHARED_DATA = (Path(__file__).resolve().parents[1].parent / "shared" / "data").resolve()


def shared_texts(data: Path = SHARED_DATA) -> list[str]:
    """Every string field of every row of the shared data files, a row's fields joined by
    blank lines: ~11 MB of math text (GSM8K, MATH-500, AIME, OpenMathInstruct, TinyGSM)."""
    from echo_nemo.data.streams import RowSource

    texts = []
    for p in sorted(data.rglob("*")):
        if p.is_file() and p.suffix in (".jsonl", ".test", ".json"):
            texts += ["\n\n".join(v for v in row.values() if isinstance(v, str)) for _, row in RowSource(p.name, [p]).rows()]
    return texts
