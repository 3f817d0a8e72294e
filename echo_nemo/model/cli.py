"""`echo-nemo model info`: shapes, parameter counts and FLOPs of the named scales."""

from __future__ import annotations

import argparse
import json

from echo_nemo.model.scales import SCALES, model_info


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect the model zoo")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    info = msub.add_parser("info", help="parameters and FLOPs per token of a scale")
    info.add_argument("--scale", default=None, choices=list(SCALES), help="one scale (default: all)")
    info.add_argument("--vocab-size", type=int, default=32000, help="vocabulary size (default 32000)")
    info.add_argument("--seq-length", type=int, default=None, help="context (default: the scale's)")
    info.add_argument("--json", action="store_true", help="print JSON (one object for --scale)")
    info.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    names = [args.scale] if args.scale else list(SCALES)
    rows = [model_info(n, args.vocab_size, args.seq_length) for n in names]
    if args.json:
        print(json.dumps(rows[0] if args.scale else rows))
        return 0
    from rich.console import Console  # here: rich loads only when a table is printed
    from rich.table import Table

    table = Table(title=f"model zoo (vocab {args.vocab_size})")
    for col in ["scale", "d_model", "layers", "heads", "ffn_hidden", "seq_length", "tied", "params", "non-emb", "GFLOPs/token"]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["scale"], str(r["d_model"]), str(r["layers"]), str(r["heads"]), str(r["ffn_hidden"]),
            str(r["seq_length"]), "yes" if r["tied_embeddings"] else "no", f"{r['params'] / 1e6:,.2f}M",
            f"{r['non_embedding_params'] / 1e6:,.2f}M", f"{r['flops_per_token'] / 1e9:.3f}",
        )
    Console().print(table)
    return 0
