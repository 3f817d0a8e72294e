"""`echo-nemo config RECIPE [key=value ...]`: validate a recipe and print it resolved."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="validate a recipe and print the fully resolved config",
        description="Validate RECIPE (its kind comes from its recipes/<kind>/ folder) with "
        "dotted key=value overrides, and print the resolved YAML.",
    )
    p.add_argument("recipe", help="path to a YAML recipe under recipes/")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=10")
    p.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from echo_nemo.config import load_recipe, schema_for_recipe, to_yaml

    cfg = load_recipe(schema_for_recipe(args.recipe), args.recipe, args.overrides)
    print(to_yaml(cfg), end="")
    return 0
