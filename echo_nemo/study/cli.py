"""`echo-nemo study RECIPE [--only f1,f3] [--seeds N] [--budget smoke|full] [--cluster local|slurm|debug]
[--dry-run] [--reuse-done] [k=v ...]`: plan, run and report a whole study (recipes/study/*.yaml).

`echo-nemo study RECIPE|STUDY_DIR --report-only` writes the report of the runs finished so far."""

from __future__ import annotations

import argparse
from pathlib import Path

from echo_nemo.launch.config import CLUSTERS


def _run(args: argparse.Namespace) -> int:
    # the handler imports what it runs: `echo-nemo --help` builds this parser without them
    from echo_nemo.launch.submit import is_done
    from echo_nemo.study.plan import describe, load_study, plan_study, refuse_changed, write_plan

    if args.report_only and Path(args.recipe).is_dir():  # a study folder: no recipe to plan
        return _report(Path(args.recipe))
    only = [f.strip() for f in args.only.split(",") if f.strip()] if args.only else None
    cfg = load_study(args.recipe, args.overrides, only=only, seeds=args.seeds, budget=args.budget)
    plan = plan_study(cfg, args.out)
    if args.report_only:
        return _report(plan.study_dir)
    done = {r.key for r in plan.runs if is_done(r.run_dir)}
    if not args.reuse_done:
        refuse_changed(plan, done)
    print(describe(plan, done))
    from echo_nemo.study.run import run_study, stage_profiles

    at_once = cfg.budgets[cfg.budget].at_once if args.cluster == "local" else 0
    for stage, prof in stage_profiles(plan).items():
        print(f"resources per {stage} run ({args.cluster}): nodes={prof.nodes} gpus_per_node={prof.gpus_per_node} "
              f"tasks_per_node={prof.ntasks_per_node} time={prof.time} partition={prof.partition} "
              f"at once={at_once or prof.array_parallelism}")
    if args.dry_run:
        return 0

    write_plan(plan)
    progress = run_study(plan, args.cluster)
    if progress.failed:
        print(f"[study] {len(progress.failed)} run(s) failed or skipped; logs under {plan.study_dir / 'logs'}; "
              "run the same command again to retry them (finished runs are kept)")
        return 1
    return 0


def _report(study_dir: Path) -> int:
    from echo_nemo.study.report import build_study_report  # matplotlib: with the command only

    print(f"[study] report: {build_study_report(study_dir, study_dir / 'report')}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study",
        help="run the study's findings: pretrainings x seeds, calibration, RL level x seeds, evals, verdicts",
        description="Plan a study recipe (recipes/study/*.yaml) into data builds, pretrainings (each once per "
        "pretraining seed, shared across findings), their calibrations, RL runs (factor level x pretraining seed "
        "x RL seed) and evals (the study's final eval of every RL run and pretrained model, and each finding's "
        "own); run them stage by stage through the sweep machinery (finished runs are skipped, so an "
        "interrupted study resumes) and write a report with each pre-registered expectation's verdict and "
        "interval, and figures per finding.",
    )
    p.add_argument("recipe", help="recipes/study/<study>.yaml (with --report-only also a study folder)")
    p.add_argument("overrides", nargs="*", metavar="k=v", help="dotted overrides of the study recipe")
    p.add_argument("--only", default=None, metavar="F1,F2", help="only these findings (e.g. f1,f4)")
    p.add_argument("--seeds", type=int, default=None,
                   help="RL seeds per level and pretraining seed (default: the budget's, else the recipe's)")
    p.add_argument("--budget", default=None, help="a budget of the recipe, e.g. smoke or full (default: the recipe's)")
    p.add_argument("--cluster", choices=list(CLUSTERS), default="local",
                   help="local: processes on this machine; slurm: one job array per stage; debug: in this process")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="parent of the study folder (default: the recipe's out_dir); the folder is DIR/NAME/BUDGET")
    p.add_argument("--dry-run", action="store_true", help="print every run and its command line, run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="write the study's report from the runs finished so far, run nothing")
    p.add_argument("--reuse-done", action="store_true",
                   help="keep finished runs whose command line the recipe has since changed (default: refuse)")
    p.set_defaults(func=_run)
