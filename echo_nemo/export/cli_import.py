"""`echo-nemo import hf DIR OUT`: an OLMo-architecture Hugging Face model as our checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import a model from another ecosystem's format")
    fmt = p.add_subparsers(dest="format", metavar="FORMAT")
    hf = fmt.add_parser(
        "hf",
        help="Hugging Face OlmoForCausalLM folder -> megatron checkpoint run dir",
        description="Read DIR (config.json of model_type olmo, *.safetensors, tokenizer.json) and "
        "write OUT/checkpoints/step_0/ plus OUT/tokenizer/, which `echo-nemo rl`, `eval` and "
        "`export` accept like any checkpoint (e.g. the study's released 150M / 1B models).",
    )
    hf.add_argument("dir", help="Hugging Face model folder")
    hf.add_argument("out", help="new run dir for the checkpoint")
    hf.set_defaults(func=_import_hf)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _import_hf(args: argparse.Namespace) -> int:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from echo_nemo import distributed as D
    from echo_nemo.export.hf import import_hf

    out = import_hf(args.dir, args.out)
    print(f"[import] wrote {out}/checkpoints/step_0")
    D.destroy_distributed()
    return 0
