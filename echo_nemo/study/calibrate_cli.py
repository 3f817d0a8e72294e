"""`echo-nemo calibrate CHECKPOINT [k=v ...] [--out DIR]`: each solution format's greedy
accuracy on a pretrained model, every format forced by its opening (echo_nemo.study.calibrate).
The study's calibrate stage runs it once per pretraining and pretraining seed."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    # the handler imports what it runs: `echo-nemo --help` builds this parser without torch
    from echo_nemo.config import load_recipe
    from echo_nemo.study.calibrate import CalibrateConfig, run_calibration

    cfg = load_recipe(CalibrateConfig, None, args.overrides)  # bad keys or values: UserError, exit 2
    cal = run_calibration(args.checkpoint, cfg, args.out)
    print(cal.table())
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint dir or a run dir (its latest checkpoint)")
    p.add_argument("overrides", nargs="*", metavar="k=v",
                   help="CalibrateConfig overrides, e.g. limit=500 samples=4 benchmark=echolab")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder for calibration.json, calibration.md, samples.jsonl "
                        "(default: CHECKPOINT/calibration)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="each format's forced greedy accuracy on a pretrained model (the study's calibrate stage)",
        description="For every solution format, append its opening to each problem's prompt, let the model "
        "continue greedily, and score opening + continuation with the RL reward: each format's accuracy, the "
        "share that stays in the format, and the gap of the two most accurate (calibration/gap_top2).",
    )
    add_arguments(p)
    p.set_defaults(func=_run)
