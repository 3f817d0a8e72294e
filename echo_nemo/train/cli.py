"""`echo-nemo pretrain RECIPE [key=value ...]` (one process, or under torchrun / srun)."""

from __future__ import annotations

import argparse

from echo_nemo.cli_args import add_out_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a GPT on token shards (resumes from the run dir's latest checkpoint)",
        description="Pretrain a megatron-core GPT from a recipe under recipes/pretrain/. "
        "Launch as one process, or under torchrun/srun for tensor and data parallelism. "
        "Writes run_dir/{config.yaml,metrics.jsonl,tensorboard/,checkpoints/step_N/,tokenizer/}.",
    )
    p.add_argument("recipe", help="recipes/pretrain/<name>.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=50 parallel.tp=2")
    add_out_option(p, "run dir to write (default: the recipe's run_dir)")
    p.set_defaults(func=_run, preemptible=True)  # echo_nemo.cli catches SLURM's stop signals


def _run(args: argparse.Namespace) -> int:
    # the handler imports what it runs (torch, megatron): `echo-nemo --help` stays light
    from echo_nemo import distributed as D
    from echo_nemo.config import load_recipe
    from echo_nemo.train.config import PretrainConfig
    from echo_nemo.train.loop import pretrain

    overrides = args.overrides + ([f"run_dir={args.out}"] if args.out else [])
    cfg = load_recipe(PretrainConfig, args.recipe, overrides)
    run_dir = pretrain(cfg)
    if D.is_main():
        print(f"[pretrain] done: {run_dir}")
    D.destroy_distributed()
    return 0
