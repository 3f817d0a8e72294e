"""`echo-nemo data build|manifest|verify|preview`.

    echo-nemo data build recipes/data/echo_tg_omi1_omi2.yaml seq_length=256
    echo-nemo data build recipes/data/as_fm3_tg.yaml --max-tokens 2000000   # a prefix, for smoke runs
    echo-nemo data manifest runs/data/echo_tg_omi1_omi2      # per-source table, shards checked
    echo-nemo data verify runs/data/echo_tg_omi1_omi2        # sha256 of every shard
    echo-nemo data preview echo_omi1 -n 2                    # print documents of a source
    echo-nemo data problems echolab_test --out test.jsonl    # a prompt set as GSM8K-style jsonl
"""

from __future__ import annotations

import argparse
import json
import os

from echo_nemo.cli_args import add_out_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build and inspect pretraining shards")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    b = dsub.add_parser("build", help="tokenize a mixture recipe into webdataset shards")
    b.add_argument("recipe", help="recipes/data/<mixture>.yaml")
    b.add_argument("overrides", nargs="*", help="dotted key=value overrides (seq_length=128)")
    add_out_option(b, "shard folder (default: the recipe's output_dir)", old="--output-dir")
    b.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date (and do not resume)")
    b.add_argument("--max-tokens", type=int, default=None,
                   help="build only a prefix of the mixture, about N tokens (smoke runs on real data)")
    b.set_defaults(func=_build)
    m = dsub.add_parser("manifest", help="print a shard folder's per-source table")
    m.add_argument("shard_dir")
    m.add_argument("--no-verify", action="store_true", help="skip the sha256 check of every shard")
    m.add_argument("--json", action="store_true", help="print the manifest as JSON")
    m.set_defaults(func=_manifest)
    v = dsub.add_parser("verify", help="check every shard against the manifest")
    v.add_argument("shard_dir")
    v.set_defaults(func=_verify)
    pv = dsub.add_parser("preview", help="print documents of a source (echo-lab needs no files)")
    pv.add_argument("source", help="e.g. echo_tg, echo_omi1, echo_omi2, echo_fm3, omi2")
    pv.add_argument("--path", default=None, help="local file for non-echo-lab sources")
    pv.add_argument("-n", type=int, default=1)
    pv.set_defaults(func=_preview)
    pr = dsub.add_parser("problems", help="write a prompt set as GSM8K-style jsonl (question, answer '#### N')")
    pr.add_argument("name", help="gsm8k_train, gsm8k_test, math_train, math500, aime24, aime25, aime22_24, "
                    "echolab_train, echolab_test, echolab_train_easy, echolab_test_easy, echolab_test_medium, "
                    "echolab_test_hard")
    pr.add_argument("--out", required=True, help="output .jsonl")
    pr.add_argument("--path", default=None, help="local source file (non-echo-lab sets)")
    pr.add_argument("--limit", type=int, default=None)
    pr.set_defaults(func=_problems)


def _build(args: argparse.Namespace) -> int:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from echo_nemo.config import load_recipe
    from echo_nemo.data.build import build_shards
    from echo_nemo.data.config import DataRecipe

    overrides = list(args.overrides) + ([f"max_tokens={args.max_tokens}"] if args.max_tokens is not None else [])
    recipe = load_recipe(DataRecipe, args.recipe, overrides)
    manifest = build_shards(recipe, args.out, force=args.force)
    print_manifest(manifest)
    return 0


def print_manifest(m: dict) -> None:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{m.get('name', '?')}: {m['num_sequences']:,} sequences x {m['seq_length'] + 1} tokens, "
                    f"{len(m['shards'])} shards, vocab {m['vocab_size']}")
    for col in ("source", "repeat", "unique docs", "documents", "tokens", "share", "bad rows"):
        t.add_column(col, justify="left" if col == "source" else "right")
    for s in m.get("sources", []):
        bad = ", ".join(f"{k} {v}" for k, v in s.get("bad_rows", {}).items() if v) or "0"
        t.add_row(s["name"], f"{s['repeat']:g}", f"{s['unique_documents']:,}", f"{s['documents']:,}",
                  f"{s['tokens']:,}", f"{100 * s['share']:.1f}%", bad)
    Console().print(t)
    packing = m.get("packing", "concat")
    waste = (f"padding: {m.get('padding_tokens', 0)} tokens" if packing == "best_fit"
             else f"dropped tail: {m.get('dropped_tokens', 0)} tokens")
    print(f"tokenizer: {m.get('tokenizer')}; packing: {packing}, {waste}")


def _manifest(args: argparse.Namespace) -> int:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from echo_nemo.data.loader import read_manifest, verify_shards

    m = read_manifest(args.shard_dir) if args.no_verify else verify_shards(args.shard_dir)
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        print_manifest(m)
    return 0


def _verify(args: argparse.Namespace) -> int:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from echo_nemo.data.loader import verify_shards

    m = verify_shards(args.shard_dir)
    print(f"ok: {len(m['shards'])} shards, {m['num_sequences']} sequences match {args.shard_dir}/manifest.json")
    return 0


def _preview(args: argparse.Namespace) -> int:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from echo_nemo.data.config import SourceSpec
    from echo_nemo.data.sources import load_documents

    for i, doc in enumerate(load_documents(SourceSpec(name=args.source, path=args.path, limit=args.n))):
        print(f"===== {args.source} #{i}\n{doc}")
    return 0


def _problems(args: argparse.Namespace) -> int:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from echo_nemo.data.sources import load_problems

    problems = load_problems(args.name, args.path, args.limit)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"id": p.id, "question": p.question, "answer": f"#### {p.answer}"}) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {len(problems)} problems of {args.name} to {args.out}")
    return 0
