"""`echo-nemo rl RECIPE [key=value ...]`: RL fine-tuning (ppo, grpo, reinforce, ei) from a recipe.

The algorithm is the recipe's `algorithm` key (overridable: `algorithm=grpo`). Without
`reward.url` the command starts a local reward server and stops it when it ends.
Running again with the same run_dir resumes from the newest checkpoint. For TP=2:
`torchrun --nproc-per-node 2 -m echo_nemo.cli rl RECIPE parallel.tp=2`.
"""

from __future__ import annotations

import argparse

from echo_nemo.cli_args import add_out_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rl", help="RL fine-tune a model (ppo, grpo, reinforce, ei)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="a YAML file under recipes/rl/")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. kl.coef=0.01 steps=20")
    add_out_option(p, "run dir to write (default: the recipe's run_dir)")
    p.set_defaults(func=_run, preemptible=True)  # echo_nemo.cli catches SLURM's stop signals


def _run(args: argparse.Namespace) -> int:
    # the handler imports what it runs (torch, megatron): `echo-nemo --help` stays light
    from echo_nemo import distributed as D
    from echo_nemo.config import load_recipe
    from echo_nemo.rl.config import RLConfig
    from echo_nemo.rl.run import run_rl

    overrides = args.overrides + ([f"run_dir={args.out}"] if args.out else [])
    cfg = load_recipe(RLConfig, args.recipe, overrides)
    run_dir = run_rl(cfg)
    if D.is_main():
        print(f"rl run dir: {run_dir}")
    D.destroy_distributed()
    return 0
