"""`echo-nemo report RUN_DIR [RUN_DIR ...]`: plots and a self-contained HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from echo_nemo.errors import UserError


def _default_out(run_dirs: list[str]) -> Path:
    # one run or one sweep folder: its own report/; several: report/ in their common parent
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "report"
    parents = {Path(d).resolve().parent for d in run_dirs}
    return (parents.pop() if len(parents) == 1 else Path.cwd()) / "report"


def _run(args: argparse.Namespace) -> int:
    # matplotlib loads when the command runs, not when `echo-nemo --help` builds the parsers
    from echo_nemo.report.html import build_report

    studies = [d for d in args.run_dirs if (Path(d) / "plan.json").is_file()]
    if studies:  # the study's report (verdicts, a section per finding) is the study command's
        raise UserError(f"{studies[0]!r} is a study folder (it holds plan.json): its report is written by "
                        f"`echo-nemo study {studies[0]} --report-only`")
    out = Path(args.out) if args.out else _default_out(args.run_dirs)
    index = build_report(args.run_dirs, out, title=args.title)
    pngs = sorted(p.name for p in out.glob("*.png"))
    print(f"report: {index} ({len(pngs)} plots)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="plots and an HTML report from run directories or a sweep folder",
        description="Draw format-share, accuracy/reward and pass@k plots from run directories "
        "(training, RL or eval runs, or a sweep folder of runs) and write a self-contained HTML report. "
        "A study folder's report: `echo-nemo study STUDY_DIR --report-only`.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories or sweep folders")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report, or report/ beside several runs)")
    p.add_argument("--title", default="echo-nemo report", help="title of the HTML page")
    p.set_defaults(func=_run)
