"""The typed config of a study run's command line (`echo-nemo ARGV` as planned): the plan
validates every run with it, and the report reads the designs (steps, prompts per step,
model scale, ...) from it."""

from __future__ import annotations

from typing import Any

from echo_nemo.config import load_recipe, schema_for_recipe


def run_overrides(argv: list[str]) -> tuple[str | None, list[str]]:
    """(recipe, overrides) of a planned command line: the k=v arguments after its recipe
    (`data build RECIPE`, `pretrain|rl|eval RECIPE`); a calibrate run has no recipe (its
    target, then CalibrateConfig overrides): (None, overrides)."""
    first = 2 if argv[0] == "data" else 1
    overrides = []
    for arg in argv[first + 1 :]:
        if arg.startswith("--"):
            break
        overrides.append(arg)
    return (None if argv[0] == "calibrate" else argv[first]), overrides


def run_config(argv: list[str]) -> Any:
    """The config the command line resolves to, through the command's own schema (an unknown
    key or a bad value raises UserError); CalibrateConfig, validated, for a calibrate run."""
    recipe, overrides = run_overrides(argv)
    if recipe is None:
        # the calibration module imports the reward and data sources: only for calibrate runs
        from echo_nemo.study.calibrate import CalibrateConfig

        cfg = load_recipe(CalibrateConfig, None, overrides)
        cfg.validate()
        return cfg
    return load_recipe(schema_for_recipe(recipe), recipe, overrides)
