"""Recipes, `defaults:` inheritance, dotted overrides and the bad-input errors (exit 2)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from echo_nemo.config import load_recipe, save_config, schema_for_recipe
from echo_nemo.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# `_name.yaml` files are partial bases, validated through the recipes that include them.
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if not p.name.startswith("_"))


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Toy:
    name: str = "toy"
    steps: int = 10
    out: str = "runs/${name}"
    optim: Optim = field(default_factory=Optim)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_chain_then_file_then_overrides(tmp_path):
    write(tmp_path / "base.yaml", "steps: 5\noptim: {lr: 0.5}\n")
    write(tmp_path / "mid.yaml", "defaults: [base]\nname: mid\noptim: {lr: 0.25}\n")
    top = write(tmp_path / "top.yaml", "defaults: [mid.yaml]\nsteps: 7\n")
    cfg = load_recipe(Toy, top, ["optim.betas=[0.8,0.9]", "name=final"])
    assert isinstance(cfg, Toy) and isinstance(cfg.optim, Optim)
    assert (cfg.steps, cfg.optim.lr, cfg.optim.betas, cfg.name) == (7, 0.25, (0.8, 0.9), "final")
    assert cfg.out == "runs/final"  # interpolation resolved after overrides
    saved = save_config(cfg, tmp_path / "run")
    assert load_recipe(Toy, saved) == cfg


def test_unknown_key_names_file_key_and_closest(tmp_path):
    base = write(tmp_path / "base.yaml", "optim: {lrr: 0.1}\n")
    top = write(tmp_path / "top.yaml", "defaults: [base]\n")
    with pytest.raises(UserError) as e:
        load_recipe(Toy, top)
    msg = str(e.value)
    assert str(base) in msg and "optim.lrr" in msg and "'optim.lr'" in msg


def test_unknown_override_key_gets_the_closest_key():
    with pytest.raises(UserError) as e:
        load_recipe(Toy, None, ["optim.lrr=0.1"])
    assert "unknown config key 'optim.lrr'" in str(e.value) and "'optim.lr'" in str(e.value)


def test_wrong_type_names_key_value_and_type(tmp_path):
    with pytest.raises(UserError) as e:
        load_recipe(Toy, None, ["steps=many"])
    msg = str(e.value)
    assert "steps=many" in msg and "'steps'" in msg and "Integer" in msg


@pytest.mark.parametrize(
    "text, needle",
    [("optim: [1, 2", "not valid YAML"), ("- a\n- b\n", "mapping"), ("defaults: [nope]\n", "nope")],
)
def test_broken_recipes(tmp_path, text, needle):
    with pytest.raises(UserError, match=needle):
        load_recipe(Toy, write(tmp_path / "r.yaml", text))


def test_missing_recipe_and_self_include(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_recipe(Toy, tmp_path / "absent.yaml")
    with pytest.raises(UserError, match="includes itself"):
        load_recipe(Toy, write(tmp_path / "loop.yaml", "defaults: [loop]\n"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(REPO)) for p in RECIPES])
def test_every_recipe_loads_and_validates(recipe):
    cfg = load_recipe(schema_for_recipe(recipe), recipe)
    assert dataclasses.is_dataclass(cfg)


def _numeric_field(schema: type, prefix: str = "") -> str | None:
    """Dotted path of an int or float field of the schema, nested ones first."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            found = _numeric_field(hints[f.name], f"{prefix}{f.name}.")
            if found:
                return found
    for f in dataclasses.fields(schema):
        if hints[f.name] in (int, float):
            return prefix + f.name
    return None


KINDS = sorted({p.relative_to(REPO / "recipes").parts[0] for p in RECIPES})


@pytest.mark.parametrize("kind", KINDS)
def test_cli_rejects_unknown_key_and_wrong_type(cli, tmp_path, kind):
    real = next(p for p in RECIPES if p.relative_to(REPO / "recipes").parts[0] == kind)
    schema = schema_for_recipe(real)
    numeric = _numeric_field(schema)
    key = numeric or dataclasses.fields(schema)[0].name
    *sections, name = key.split(".")
    body = f"{name}x: 1"
    for section in reversed(sections):
        body = f"{section}: {{{body}}}"
    bad = write(tmp_path / "recipes" / kind / "bad.yaml", f"defaults: [{real}]\n{body}\n")
    res = cli("config", bad)
    assert res.returncode == 2
    assert str(bad) in res.stderr and f"{key}x" in res.stderr
    assert f"'{key}'" in res.stderr and "Traceback" not in res.stderr

    if numeric:  # every schema but the flat sweep one has a typed number to get wrong
        res = cli("config", real, f"{key}=not-a-number")
        assert res.returncode == 2
        assert key in res.stderr and "not-a-number" in res.stderr
        assert "Traceback" not in res.stderr

    ok = cli("config", real)
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)
    for part in key.split("."):
        resolved = resolved[part]
    assert resolved is not None


def test_cli_rejects_an_unknown_model_scale(cli):
    res = cli("config", REPO / "recipes" / "pretrain" / "tiny.yaml", "model.scale=huge")
    assert res.returncode == 2 and "'huge'" in res.stderr and "150m" in res.stderr


def test_cli_usage_errors(cli):
    assert cli().returncode == 2  # no subcommand: help and exit 2
    res = cli("config", "recipes/nowhere/x.yaml")
    assert res.returncode == 2 and "recipes/<" in res.stderr


RENAMES = [  # (recipe, old key, value in the old spelling, new key, value it must land as)
    ("pretrain/tiny.yaml", "optim.beta2", "0.98", "optim.betas", [0.9, 0.98]),
    ("rl/grpo_echolab_tiny.yaml", "model.tp", "2", "parallel.tp", 2),
    ("eval/echolab_tiny_cpu.yaml", "tp", "2", "parallel.tp", 2),
]


@pytest.mark.parametrize(("recipe", "old", "value", "new", "landed"), RENAMES)
def test_renamed_keys_migrate_in_recipes_and_exit_2_on_the_command_line(cli, tmp_path, recipe, old, value,
                                                                         new, landed):
    kind = recipe.split("/")[0]
    *sections, name = old.split(".")
    body = f"{name}: {value}"
    for section in reversed(sections):
        body = f"{section}: {{{body}}}"
    legacy = write(tmp_path / "recipes" / kind / "legacy.yaml", f"defaults: [{REPO / 'recipes' / recipe}]\n{body}\n")
    res = cli("config", legacy)
    assert res.returncode == 0, res.stderr
    assert f"'{old}' is now '" in res.stderr  # the migration says so
    resolved = yaml.safe_load(res.stdout)
    for part in new.split("."):
        resolved = resolved[part]
    assert resolved == landed

    res = cli("config", REPO / "recipes" / recipe, f"{old}={value}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{old!r} was renamed to" in res.stderr and new in res.stderr
