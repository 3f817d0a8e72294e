"""`echo-nemo tokenizer train|encode`: train a byte-level BPE, or inspect one.

    echo-nemo tokenizer train --out tokenizer --vocab-size 1024 --seed 0
    echo-nemo tokenizer train --out /tmp/tok --vocab-size 32000 --input a.jsonl --input b.txt

Without --input the corpus is echo-lab text: every problem type in all three formats
and background prose (the committed default in tokenizer/ was made this way).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from echo_nemo.errors import UserError, require_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train or inspect a tokenizer")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = tsub.add_parser("train", help="train a byte-level BPE tokenizer")
    t.add_argument("--out", required=True, help="output folder (tokenizer.json, tokenizer_config.json)")
    t.add_argument("--vocab-size", type=int, default=1024)
    t.add_argument("--seed", type=int, default=0, help="echo-lab corpus seed")
    t.add_argument("--num-problems", type=int, default=4000, help="echo-lab problems per format")
    t.add_argument("--input", action="append", default=[],
                   help="train on these files instead (.txt: one document; .jsonl/.json: a `text` field "
                        "or question+solution fields)")
    t.set_defaults(func=_train)
    e = tsub.add_parser("encode", help="show the tokens of a text")
    e.add_argument("text")
    e.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the committed one)")
    e.set_defaults(func=_encode)


def echolab_corpus(seed: int, num_problems: int) -> list[str]:
    """Echo-lab documents spanning all difficulties and number sizes."""
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from echo_nemo.data.config import EchoLabConfig
    from echo_nemo.data.sources import load_documents

    cfg = EchoLabConfig(seed=seed, num_problems=num_problems, num_background=num_problems // 4,
                        min_steps=1, max_steps=5, max_number=50)
    texts: list[str] = []
    for name in ("echo_tg", "echo_omi1", "echo_omi2", "echo_fm3"):
        texts.extend(load_documents(name, cfg))
    return texts


def _file_texts(path: str) -> list[str]:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from echo_nemo.data.sources import read_rows

    p = Path(require_file(path, "tokenizer training input"))
    if p.suffix == ".txt":
        return [p.read_text(encoding="utf-8")]
    texts = []
    for row in read_rows(p):
        if "text" in row:
            texts.append(str(row["text"]))
            continue
        q = next((row[k] for k in ("question", "problem", "query", "user") if k in row), None)
        s = next((row[k] for k in ("generated_solution", "solution", "code", "response", "assistant",
                                   "answer") if k in row), None)
        if q is None or s is None:
            raise UserError(f"{path}: a row has neither `text` nor question/solution fields "
                            f"(fields: {', '.join(row)})")
        texts.append(f"{q}\n\n{s}")
    return texts


def _train(args: argparse.Namespace) -> int:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from echo_nemo.tokenizer import train_tokenizer

    if args.input:
        texts = [t for path in args.input for t in _file_texts(path)]
        corpus = ", ".join(args.input)
    else:
        texts = echolab_corpus(args.seed, args.num_problems)
        corpus = f"echo-lab seed {args.seed}, {args.num_problems} problems per format"
    tok = train_tokenizer(texts, args.vocab_size, args.out)
    print(f"trained {tok.vocab_size} tokens on {len(texts)} documents ({corpus}) -> {args.out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    # the command's modules load when it runs: `echo-nemo --help` imports only the parsers
    from echo_nemo.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text)
    print(ids)
    print([tok.decode([i]) for i in ids])
    return 0
