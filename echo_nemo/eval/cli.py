"""`echo-nemo eval --checkpoint CKPT --benchmarks gsm8k,echolab [recipe] [k=v ...]`.

Over a run's checkpoints (echo_nemo.eval.steps): `--checkpoint RUN_DIR --all-steps` (every
kept checkpoint and step 0 = the run's model.init) or `--steps 0,10,35` (those steps; implies
--all-steps' mode), writing OUT/steps/step_<N>.json and one metrics.jsonl row per step.

Tensor parallel like every other command: `torchrun --nproc-per-node 2 -m echo_nemo.cli
eval ... parallel.tp=2`.
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table

from echo_nemo.cli_args import add_out_option
from echo_nemo.errors import UserError


def _run(args: argparse.Namespace) -> int:
    # the handler imports what it runs (torch, megatron): `echo-nemo --help` stays light
    from echo_nemo import distributed as D
    from echo_nemo.config import load_recipe
    from echo_nemo.eval.config import EvalConfig
    from echo_nemo.eval.run import print_table, run_eval

    overrides = list(args.overrides)
    if args.recipe and "=" in args.recipe and not args.recipe.endswith((".yaml", ".yml")):
        overrides.insert(0, args.recipe)  # no recipe given: the first positional is an override
        args.recipe = None
    # explicit flags win over the recipe and the k=v overrides
    for key, value in (("checkpoint", args.checkpoint), ("run_dir", args.out), ("limit", args.limit),
                       ("sampling.n", args.samples), ("label", args.label)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.benchmarks:
        overrides.append(f"benchmarks=[{args.benchmarks}]")
    if args.all_steps:
        overrides.append("all_steps=true")
    if args.steps is not None:
        try:
            steps = [int(s) for s in args.steps.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--steps: expected comma-separated checkpoint steps like 0,10,35, got {args.steps!r}") from None
        if not steps:
            raise UserError("--steps: no step given (e.g. --steps 0,10,35)")
        overrides.append(f"steps=[{','.join(map(str, steps))}]")
    cfg = load_recipe(EvalConfig, args.recipe, overrides)
    if cfg.over_steps:
        return _run_steps(cfg)
    out = run_eval(cfg)
    if D.is_main():
        print_table(out["benchmarks"], f"eval of {out['checkpoint']} (step {out['step']}, tp={cfg.parallel.tp})")
        print(f"results: {os.path.join(cfg.run_dir, 'results.json')}")
    return 0


def _run_steps(cfg) -> int:
    from echo_nemo import distributed as D  # torch and megatron, with the command
    from echo_nemo.eval.steps import metrics_rows, run_eval_steps

    stored = run_eval_steps(cfg)
    if D.is_main():
        rows = metrics_rows(stored)
        keys = [k for k in rows[0] if k.startswith("acc/")] if rows else []
        table = Table(title=f"eval of {cfg.checkpoint} over {len(rows)} checkpoint(s)")
        for col in ["step", *keys]:
            table.add_column(col.removeprefix("acc/"), overflow="fold")
        for r in rows:
            table.add_row(str(r["step"]), *(f"{r[k]:.3f}" if k in r else "-" for k in keys))
        Console().print(table)
        print(f"results: {os.path.join(cfg.run_dir, 'steps')}/step_<N>.json, {os.path.join(cfg.run_dir, 'metrics.jsonl')}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (or a run's checkpoints over steps): pass@1, pass@k, maj@k, formats",
        description="Evaluate a checkpoint on benchmarks (gsm8k, math500, aime24, aime25, aime22_24, echolab, "
        "echolab_easy, echolab_medium, echolab_hard): greedy pass@1, sampled pass@k (unbiased estimator) and maj@k, and the "
        "share and accuracy of every solution format. Writes results.json, metrics.jsonl and samples.jsonl "
        "into the run dir. With --all-steps or --steps, --checkpoint is a run dir and each of its kept "
        "checkpoints (step 0: the run's model.init) is evaluated into OUT/steps/step_<N>.json, one "
        "metrics.jsonl row per step; steps already in OUT are skipped (resumable). "
        "Tensor parallel: torchrun --nproc-per-node N -m echo_nemo.cli eval ... parallel.tp=N.",
    )
    p.add_argument("recipe", nargs="?", default=None, help="recipes/eval/*.yaml (optional)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sampling.n=16 limit=100 parallel.tp=2")
    p.add_argument("--checkpoint", help="checkpoint dir or run dir (its latest checkpoint)")
    p.add_argument("--all-steps", action="store_true",
                   help="--checkpoint is a run dir: evaluate every kept checkpoint and step 0 (the run's model.init)")
    p.add_argument("--steps", metavar="N,N,...",
                   help="evaluate these checkpoint steps of the run dir (0: its model.init); implies --all-steps' mode")
    p.add_argument("--benchmarks", help="comma-separated: gsm8k,math500,aime24,aime25,aime22_24,echolab,"
                   "echolab_easy,echolab_medium,echolab_hard")
    add_out_option(p, "run dir to write (default: the recipe's run_dir)")
    p.add_argument("--limit", type=int, help="first N problems of each benchmark")
    p.add_argument("--samples", type=int, help="samples per problem for pass@k/maj@k (0: greedy only)")
    p.add_argument("--label", help="name shown in reports (e.g. 'before RL')")
    p.set_defaults(func=_run)
