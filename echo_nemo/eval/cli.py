"""`echo-nemo eval --checkpoint CKPT --benchmarks gsm8k,echolab [recipe] [k=v ...]`.

Tensor parallel like every other command: `torchrun --nproc-per-node 2 -m echo_nemo.cli
eval ... parallel.tp=2`.
"""

from __future__ import annotations

import argparse
import os

from echo_nemo.cli import add_out_option


def _run(args: argparse.Namespace) -> int:
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
    cfg = load_recipe(EvalConfig, args.recipe, overrides)
    out = run_eval(cfg)
    if D.is_main():
        print_table(out["benchmarks"], f"eval of {out['checkpoint']} (step {out['step']}, tp={cfg.parallel.tp})")
        print(f"results: {os.path.join(cfg.run_dir, 'results.json')}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: pass@1, pass@k, maj@k and format shares",
        description="Evaluate a checkpoint on benchmarks (gsm8k, math500, aime24, aime25, echolab): greedy "
        "pass@1, sampled pass@k (unbiased estimator) and maj@k, and the share and accuracy of every "
        "solution format. Writes results.json, metrics.jsonl and samples.jsonl into the run dir. "
        "Tensor parallel: torchrun --nproc-per-node N -m echo_nemo.cli eval ... parallel.tp=N.",
    )
    p.add_argument("recipe", nargs="?", default=None, help="recipes/eval/*.yaml (optional)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sampling.n=16 limit=100 parallel.tp=2")
    p.add_argument("--checkpoint", help="checkpoint dir or run dir (its latest checkpoint)")
    p.add_argument("--benchmarks", help="comma-separated: gsm8k,math500,aime24,aime25,echolab")
    add_out_option(p, "run dir to write (default: the recipe's run_dir)")
    p.add_argument("--limit", type=int, help="first N problems of each benchmark")
    p.add_argument("--samples", type=int, help="samples per problem for pass@k/maj@k (0: greedy only)")
    p.add_argument("--label", help="name shown in reports (e.g. 'before RL')")
    p.set_defaults(func=_run)
