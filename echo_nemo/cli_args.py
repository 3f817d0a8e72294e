"""Command-line pieces every command's parser shares: `--out DIR`, and `key=value`
overrides anywhere on the line.

argparse takes a run of positionals only once: in `rl RECIPE a=1 --out DIR b=2` the
overrides positional has taken `a=1` when `--out` is seen, and `b=2` is left over.
Hydra and torchrun users write options and overrides in any order, so `parse_command_line`
hands such left-over `key=value` words to the command's `overrides`, in the order given
(a later one wins, as before); anything else left over, such as a misspelt option,
is still refused with argparse's usage error (exit 2).
"""

from __future__ import annotations

import argparse
import sys


class _DeprecatedAlias(argparse.Action):
    """An old option spelling: still works for one release, with a line saying so."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"echo-nemo: {option_string} is deprecated, use --{self.dest}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_out_option(parser: argparse.ArgumentParser, help: str, old: str | None = None) -> None:
    """`--out DIR`: the one spelling of "the folder this command writes" (run or data dir).
    `old` is a previous spelling kept as a deprecated alias."""
    parser.add_argument("--out", default=None, metavar="DIR", help=help)
    if old:
        parser.add_argument(old, dest="out", action=_DeprecatedAlias, help=argparse.SUPPRESS)


def is_override(word: str) -> bool:
    """`key=value` (dotted keys, e.g. `model.init=X`), not an option such as `--out=DIR`."""
    return not word.startswith("-") and word.find("=") > 0


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, with `key=value` words accepted before and after the
    options of a command that has an `overrides` positional (every one that takes them)."""
    args, extra = parser.parse_known_args(argv)
    takes = isinstance(getattr(args, "overrides", None), list)
    late = [w for w in extra if takes and is_override(w)]
    unknown = [w for w in extra if not (takes and is_override(w))]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if late:
        args.overrides = [*args.overrides, *late]
    return args
