"""Expand a sweep grid into points: overrides for the command and a run-dir name.

The grid is the cartesian product of its keys in the order they are written. A point's
name joins `key-label` parts with `__`, e.g. `mixture-as_fm3_tg__kl.coef-0.001__algorithm-ppo`
(sweep variables lose their leading `_`; labels are made filesystem-safe). Names are
unique within a sweep (checked).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from echo_nemo.errors import UserError
from echo_nemo.launch.config import SweepConfig

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")


@dataclass(frozen=True)
class Point:
    index: int
    name: str
    values: dict[str, Any]  # grid key -> value (labels resolved)
    labels: dict[str, str]  # grid key -> label used in the name
    overrides: list[str] = field(default_factory=list)  # k=v passed to the command

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "values": self.values,
            "labels": self.labels,
            "overrides": self.overrides,
        }


def format_value(value: Any) -> str:
    """A value as the right-hand side of a dotted override (JSON is YAML flow syntax)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def label_of(value: Any) -> str:
    """Filesystem-safe label of a grid value: 0.001 -> 0.001, 'a/b c' -> a-b-c."""
    text = format_value(value)
    text = re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-")
    return text or "empty"


def short_key(key: str) -> str:
    return key.lstrip("_").split(".")[-1]


def _axes(cfg: SweepConfig) -> list[tuple[str, list[tuple[str, Any]]]]:
    """Each grid key with its (label, value) pairs."""
    axes = []
    for key, values in cfg.grid.items():
        if isinstance(values, dict):
            pairs = [(label_of(label), v) for label, v in values.items()]
        else:
            pairs = [(label_of(v), v) for v in values]
        labels = [label for label, _ in pairs]
        if len(set(labels)) != len(labels):
            raise UserError(f"sweep {cfg.name!r}: grid key {key!r} has repeated values {labels}")
        axes.append((key, pairs))
    return axes


def fill(template: str, labels: dict[str, str], values: dict[str, Any], where: str) -> str:
    """Replace `{key}` with the point's value of grid key `key` (or its short name)."""
    by_short = {short_key(k): k for k in values}

    def sub(m: re.Match) -> str:
        name = m.group(1)
        key = name if name in values else by_short.get(name.lstrip("_"))
        if key is None:
            raise UserError(
                f"{where}: placeholder {{{name}}} names no grid key (grid keys: {', '.join(values)})"
            )
        return format_value(values[key])

    return _PLACEHOLDER.sub(sub, template)


def expand(cfg: SweepConfig) -> list[Point]:
    """All points of the sweep, in grid order (the first key varies slowest)."""
    axes = _axes(cfg)
    short = [k.lstrip("_") for k, _ in axes]
    points = []
    for index, combo in enumerate(itertools.product(*(pairs for _, pairs in axes))):
        values = {key: value for (key, _), (_, value) in zip(axes, combo)}
        labels = {key: label for (key, _), (label, _) in zip(axes, combo)}
        name = "__".join(f"{s}-{label}" for s, (label, _) in zip(short, combo))
        overrides = [
            f"{key}={format_value(value)}"
            for key, value in values.items()
            if not key.startswith("_")
        ]
        overrides += [
            fill(o, labels, values, f"sweep {cfg.name!r} override {o!r}") for o in cfg.overrides
        ]
        points.append(Point(index, name, values, labels, overrides))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise UserError(f"sweep {cfg.name!r}: grid labels give duplicate run names")
    return points
