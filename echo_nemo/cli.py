"""`echo-nemo`: one entry point, thin.

Each subcommand lives beside the code it drives, in a module with a
`register(subparsers)` function that adds its parser and sets `func`. Those modules
import only argparse-level things at the top; heavy imports (torch, megatron) happen
inside the handlers, so `echo-nemo --help` is instant. The pieces their parsers share
(`--out`, `key=value` overrides before and after the options) are in cli_args.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings

from echo_nemo import cpu, patches
from echo_nemo.cli_args import parse_command_line
from echo_nemo.errors import EXIT_BAD_INPUT, UserError
from echo_nemo.preempt import EXIT_REQUEUE, Preempted, catch_signals

# (subcommand, module providing `register`) in the order `--help` lists them.
COMMANDS: list[tuple[str, str]] = [
    ("quickstart", "echo_nemo.quickstart"),
    ("config", "echo_nemo.config_cli"),
    ("model", "echo_nemo.model.cli"),
    ("tokenizer", "echo_nemo.data.tokenizer_cli"),
    ("data", "echo_nemo.data.cli"),
    ("pretrain", "echo_nemo.train.cli"),
    ("rl", "echo_nemo.rl.cli"),
    ("reward", "echo_nemo.reward.cli"),
    ("eval", "echo_nemo.eval.cli"),
    ("report", "echo_nemo.report.cli"),
    ("export", "echo_nemo.export.cli"),
    ("import", "echo_nemo.export.cli_import"),
    ("sweep", "echo_nemo.launch.cli"),
    ("calibrate", "echo_nemo.study.calibrate_cli"),
    ("study", "echo_nemo.study.cli"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echo-nemo",
        description="Pretrain GPT models on open math data, RL fine-tune them, and measure "
        "which solution formats RL amplifies.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # not written yet: leave it out of the CLI
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    patches.defer_megatron_compile()  # before any command imports megatron-core
    # megatron-core warns at import that apex / Transformer Engine are absent (expected
    # on CPU) and about its own deprecations: noise in every command's output.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(megatron|torch\.distributed)\.")
    parser = build_parser()
    args = parse_command_line(parser, argv)  # key=value overrides anywhere on the line
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT if args.command is None else 0
    try:
        cpu.apply()  # the CPU speed layer, before the first tensor (a misspelt switch exits 2 now)
        # pretrain and rl stop on SLURM's signals after a step, save and exit 75 (echo_nemo.preempt).
        # Caught for the whole command, not only inside their loops: a signal during set-up
        # stops the run at its first step, and one after the last step (final save,
        # teardown) no longer kills a run that has finished. Other commands keep the
        # default: SIGTERM ends them at once.
        stops = catch_signals() if getattr(args, "preemptible", False) else contextlib.nullcontext()
        with stops:
            rc = args.func(args)
    except UserError as e:
        print(f"echo-nemo: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Preempted as e:  # a resume checkpoint is saved: ask the scheduler for a requeue
        print(f"echo-nemo: {e}", file=sys.stderr)
        return EXIT_REQUEUE
    except KeyboardInterrupt:
        print("echo-nemo: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
