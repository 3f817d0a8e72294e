"""`echo-nemo sweep RECIPE [--cluster slurm|local|debug] [--dry-run] [k=v ...]` and
`echo-nemo sweep status DIR`."""

from __future__ import annotations

import argparse

from echo_nemo.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of pretrain/RL runs through submitit (SLURM job arrays), or show a sweep's status",
        description="`echo-nemo sweep recipes/sweeps/X.yaml [k=v ...]` submits one job per grid point; "
        "`echo-nemo sweep status SWEEP_DIR` shows each point's state and log.",
    )
    p.add_argument("recipe", metavar="RECIPE|status", help="a sweep recipe, or `status`")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="k=v|DIR",
        help="overrides of the sweep recipe (or the sweep dir)",
    )
    p.add_argument(
        "--cluster",
        choices=["slurm", "local", "debug"],
        default="slurm",
        help="slurm: sbatch job array; local: subprocesses on this machine; debug: in this process",
    )
    p.add_argument(
        "--profile", help="cluster profile (slurm/profiles/NAME.yaml); default: the recipe's"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the points and the sbatch script, submit nothing",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for the jobs and exit 1 if any point failed"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # submitit and the sweep machinery load when the command runs: `echo-nemo --help` stays light
    from echo_nemo.launch.status import format_status, sweep_status

    if args.recipe == "status":
        if len(args.overrides) != 1:
            raise UserError("usage: echo-nemo sweep status SWEEP_DIR")
        print(format_status(sweep_status(args.overrides[0])))
        return 0

    from echo_nemo.launch.submit import (
        describe,
        plan_sweep,
        points_to_submit,
        sbatch_script,
        submit_sweep,
        wait_for,
    )

    plan = plan_sweep(args.recipe, args.overrides, args.profile)
    todo, skipped = points_to_submit(plan)
    print(describe(plan, args.cluster, todo, skipped))
    if args.dry_run:
        if args.cluster == "slurm":
            print("\n# sbatch script (one array task per point):")
            print(sbatch_script(plan, max(1, len(todo))))
        return 0
    jobs = submit_sweep(plan, args.cluster)
    ids = sorted({str(j.job_id).split("_")[0] for _, j in jobs})
    print(
        f"submitted {len(jobs)} points as job(s) {', '.join(ids) or '-'}; "
        f"status: echo-nemo sweep status {plan.sweep_dir}"
    )
    if not (args.wait or args.cluster != "slurm"):
        return 0
    outcome = wait_for(jobs)
    print(format_status(sweep_status(plan.sweep_dir)))
    return 1 if any(v != "done" for v in outcome.values()) else 0
