"""`echo-nemo export hf CKPT OUT`: a checkpoint as a transformers OlmoForCausalLM folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to another ecosystem's format")
    fmt = p.add_subparsers(dest="format", metavar="FORMAT")
    hf = fmt.add_parser(
        "hf",
        help="Hugging Face OlmoForCausalLM (safetensors + config + tokenizer)",
        description="Write OUT/ with model.safetensors, config.json and the tokenizer, loadable by "
        "transformers.AutoModelForCausalLM with no custom code. CKPT is a step_<N> checkpoint "
        "folder or a run dir (its latest checkpoint), saved at any TP size.",
    )
    hf.add_argument("ckpt", help="checkpoint folder or run dir")
    hf.add_argument("out", help="output folder (must be new or empty)")
    hf.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weight dtype")
    hf.set_defaults(func=_export_hf)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _export_hf(args: argparse.Namespace) -> int:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    import torch

    from echo_nemo import distributed as D
    from echo_nemo.export.hf import export_hf

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    out = export_hf(args.ckpt, args.out, dtype=dtype)
    print(f"[export] wrote {out} (OlmoForCausalLM, {args.dtype})")
    D.destroy_distributed()
    return 0
