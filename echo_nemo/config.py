"""Typed configs: YAML recipes with `defaults:` inheritance and dotted overrides.

Every component owns a dataclass schema (e.g. `echo_nemo.train.config.PretrainConfig`).
A recipe is a YAML file validated against one schema:

    defaults: [../base/tiny.yaml]     # merged first, in order, paths relative to this file
    train: {steps: 200}

`load_recipe(Schema, path, ["train.lr=3e-4"])` merges defaults, the file, then the
overrides into an OmegaConf structured config, resolves interpolations and returns a
real dataclass instance. Unknown keys and wrong types raise `UserError` naming the file
(or the override), the key and what was expected, so the CLI exits 2 without a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import sys
import typing
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from echo_nemo.errors import UserError

T = TypeVar("T")

# Recipe folders -> the schema their YAML files validate against (imported lazily so
# that `echo-nemo --help` does not import torch).
RECIPE_SCHEMAS: dict[str, str] = {
    "data": "echo_nemo.data.config:DataRecipe",
    "pretrain": "echo_nemo.train.config:PretrainConfig",
    "rl": "echo_nemo.rl.config:RLConfig",
    "eval": "echo_nemo.eval.config:EvalConfig",
    "sweeps": "echo_nemo.launch.config:SweepConfig",
    "study": "echo_nemo.study.config:StudyConfig",
}

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"


@dataclasses.dataclass
class ParallelConfig:
    """How a run is split over processes: the same section in pretrain, rl and eval recipes.

    One launch story for every command: start `tp x dp` processes with torchrun (or srun
    under SLURM); the world size divided by `tp` is the data-parallel size.
    """

    tp: int = 1  # tensor parallel size

    def validate(self) -> None:
        if self.tp < 1:
            raise UserError(f"parallel.tp must be >= 1, got {self.tp}")

    def build(self, seed: int):
        """Initialise process groups for this layout (see echo_nemo.distributed)."""
        from echo_nemo import distributed as D  # torch: only commands that start processes load it

        return D.init_distributed(tp=self.tp, seed=seed)


@dataclasses.dataclass
class SamplingConfig:
    """How completions are sampled: the same keys in RL's `rollout:` and `ei.sampling:` and
    eval's `sampling:`, passed to echo_nemo.model.generate.generate as they are.

    Logits are divided by `temperature`, then cut to the `top_k` likeliest tokens (0: no
    cut) and to the smallest set whose probability reaches `top_p`.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def validate(self, where: str = "sampling") -> None:
        if self.temperature <= 0:
            raise UserError(f"{where}.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"{where}.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"{where}.top_k must be >= 0 (0: no cut), got {self.top_k}")

    def generate_kwargs(self) -> dict[str, Any]:
        """temperature, top_p and top_k as keyword arguments of `generate`."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


def import_object(dotted: str) -> Any:
    """Import `package.module:attr`."""
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def schema_for_recipe(path: str | os.PathLike) -> type:
    """The schema of a recipe, chosen by the recipes/<kind>/ folder it lives in."""
    parts = Path(path).resolve().parts
    for kind, dotted in RECIPE_SCHEMAS.items():
        if "recipes" in parts and kind in parts[parts.index("recipes") :]:
            return import_object(dotted)
    raise UserError(
        f"cannot tell the kind of recipe {str(path)!r}: expected it under "
        f"recipes/<{'|'.join(RECIPE_SCHEMAS)}>/"
    )


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise UserError(f"recipe not found: {str(path)!r} (expected a YAML file)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise UserError(f"recipe {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"recipe {str(path)!r} must be a mapping at the top level")
    return cfg


def _expand_defaults(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """The chain of (source name, config) to merge, base files first."""
    path = path.resolve()
    if path in seen:
        raise UserError(f"recipe {str(path)!r} includes itself through `defaults`")
    cfg = _read_yaml(path)
    chain: list[tuple[str, DictConfig]] = []
    defaults = cfg.pop("defaults", None)
    if defaults is not None:
        if isinstance(defaults, str):
            defaults = [defaults]
        for entry in defaults:
            base = Path(str(entry))
            if not base.suffix:
                base = base.with_suffix(".yaml")
            if not base.is_absolute():
                base = path.parent / base
            if not base.is_file():
                raise UserError(
                    f"recipe {str(path)!r}: defaults entry {str(entry)!r} not found "
                    f"(looked for {str(base)!r})"
                )
            chain.extend(_expand_defaults(base, seen + (path,)))
    chain.append((f"recipe {str(path)!r}", cfg))
    return chain


def _valid_keys(schema: type, dotted: str) -> list[str]:
    """Valid keys at the level of `dotted` in the schema (for 'did you mean')."""
    cls: Any = schema
    for part in dotted.split(".")[:-1]:
        if not dataclasses.is_dataclass(cls):
            return []
        cls = typing.get_type_hints(cls).get(part)
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _explain(e: OmegaConfBaseException, source: str, schema: type) -> UserError:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
    if isinstance(e, ConfigKeyError | ConfigAttributeError):
        valid = _valid_keys(schema, str(key))
        close = difflib.get_close_matches(str(key).split(".")[-1], valid, n=1)
        hint = f"; did you mean {'.'.join(str(key).split('.')[:-1] + close[:1])!r}?" if close else ""
        known = f" (valid keys here: {', '.join(valid)})" if valid else ""
        return UserError(f"{source}: unknown config key {str(key)!r}{hint}{known}")
    if isinstance(e, ValidationError):
        msg = (getattr(e, "msg", None) or str(e)).splitlines()[0]
        return UserError(f"{source}: wrong type for config key {str(key)!r}: {msg}")
    return UserError(f"{source}: invalid config at {str(key)!r}: {str(e).splitlines()[0]}")


def _pop_renamed(part: DictConfig, renamed: dict[str, str], source: str) -> list[tuple[str, Any]]:
    """Take the keys an older schema used out of a recipe: [(new key, value)] to set after
    merging it. Each one prints a line asking to rename it (old recipes keep working)."""
    moved = []
    for old, new in renamed.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(part, parent) if parent else part
        if isinstance(node, DictConfig) and leaf in node:
            moved.append((new, OmegaConf.to_container(node, resolve=False)[leaf]))
            del node[leaf]
            print(f"{source}: config key {old!r} is now {new!r} (migrated; please rename it)", file=sys.stderr)
    return moved


def compose(schema: type[T], path: str | os.PathLike | None, overrides: list[str] | None = None) -> DictConfig:
    """Merge schema defaults, the recipe chain and dotted overrides; validate each step."""
    cfg = OmegaConf.structured(schema)
    renamed: dict[str, str] = getattr(schema, "RENAMED", {})
    chain = _expand_defaults(Path(path)) if path is not None else []
    for source, part in chain:
        moved = _pop_renamed(part, renamed, source)
        try:
            cfg = OmegaConf.merge(cfg, part)
            for key, value in moved:
                OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as e:
            raise _explain(e, source, schema) from None
    for item in overrides or []:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise UserError(f"override {item!r} must look like key=value (e.g. train.lr=3e-4)")
        if key in renamed:
            raise UserError(f"override {item!r}: config key {key!r} was renamed to {renamed[key]!r}")
        # Parse the value with OmegaConf's grammar (1e-3 is a float, [a,b] a list), then
        # update in place so list indices work: sources.1.repeat=4.
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as e:
            raise _explain(e, f"override {item!r}", schema) from None
        except (TypeError, ValueError, IndexError) as e:
            raise UserError(f"override {item!r}: cannot set {key!r}: {e}") from None
    return cfg


def load_recipe(schema: type[T], path: str | os.PathLike | None, overrides: list[str] | None = None) -> T:
    """Load a recipe into a typed, resolved dataclass instance (see module docstring)."""
    cfg = compose(schema, path, overrides)
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise _explain(e, f"recipe {str(path)!r}", schema) from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj  # type: ignore[return-value]


def to_yaml(obj: Any) -> str:
    """The fully resolved config as YAML (what run directories store as config.yaml)."""
    return OmegaConf.to_yaml(OmegaConf.structured(obj), resolve=True)


def save_config(obj: Any, run_dir: str | os.PathLike) -> Path:
    """Write `config.yaml` into the run directory atomically."""
    out = Path(run_dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".yaml.tmp")
    tmp.write_text(to_yaml(obj))
    os.replace(tmp, out)
    return out


def load_saved_config(schema: type[T], run_dir: str | os.PathLike) -> T:
    """Read back a run directory's config.yaml into its schema."""
    return load_recipe(schema, Path(run_dir) / "config.yaml")
