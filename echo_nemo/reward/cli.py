"""``echo-nemo reward serve|score``: run the reward server, or score a JSONL file.

The command functions import what they use (FastAPI, uvicorn, rich, the sandbox) when
they run: `register` is called for every ``echo-nemo`` command, ``--help`` included.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("reward", help="rule-based math reward: server and scoring")
    sub = parser.add_subparsers(dest="reward_command", metavar="ACTION", required=True)

    serve = sub.add_parser("serve", help="run the reward HTTP server (FastAPI + uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers", type=int, default=None, help="sandbox worker processes (default: CPU count)"
    )
    serve.add_argument(
        "--timeout", type=float, default=None, help="wall seconds per code execution (default 5)"
    )
    serve.add_argument(
        "--strict", action="store_true",
        help="refuse to start (exit 2) when the sandbox cannot isolate the network",
    )  # fmt: skip
    serve.add_argument(
        "--tokenizer", default=None,
        help="Hugging Face tokenizer folder of the policy: its bos/eos/pad/unk strings are removed "
        "from queries too (common ones like </s> always are)",
    )  # fmt: skip
    serve.set_defaults(func=_serve)

    score = sub.add_parser(
        "score", help="score a JSONL file of completions; print one JSON line each"
    )
    score.add_argument("input", help="JSONL file, one object per line")
    score.add_argument("--completion-key", default="completion")
    score.add_argument(
        "--answer-key", default="answer",
        help="field holding the ground truth: a number, GSM8K's worked answer or '#### N', a "
        "solution with \\boxed{}, 'The answer is: X', or a bare expression",
    )  # fmt: skip
    score.add_argument(
        "--url", default=None, help="score through this reward server instead of locally"
    )
    score.set_defaults(func=_score)


def _limits(timeout: float | None):
    from echo_nemo.errors import UserError
    from echo_nemo.reward.sandbox import Limits

    if timeout is None:
        return None
    if timeout <= 0:
        raise UserError(f"--timeout must be positive, got {timeout}")
    return Limits(wall_s=timeout, cpu_s=max(1, int(timeout)))


def _serve(args: argparse.Namespace) -> int:
    from echo_nemo.errors import UserError
    from echo_nemo.reward.server import serve

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if not 0 <= args.port < 65536:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    serve(args.host, args.port, args.workers, _limits(args.timeout), strict=args.strict,
          tokenizer=args.tokenizer)  # fmt: skip
    return 0


def _read_rows(path: str, completion_key: str, answer_key: str) -> tuple[list[str], list]:
    from echo_nemo.errors import UserError, require_file

    require_file(path, "input file")
    completions, answers = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e})") from e
            if not isinstance(row, dict) or not isinstance(row.get(completion_key), str):
                raise UserError(f"{path}:{n}: expected a string field {completion_key!r}")
            if answer_key not in row:
                raise UserError(f"{path}:{n}: no field {answer_key!r} (the ground truth)")
            completions.append(row[completion_key])
            answers.append(row[answer_key])
    return completions, answers


def _score(args: argparse.Namespace) -> int:
    """Print one JSON line per row; exit 2 when any row's ground truth holds no answer."""
    from rich.progress import track

    from echo_nemo.errors import EXIT_BAD_INPUT

    completions, answers = _read_rows(args.input, args.completion_key, args.answer_key)
    chunk = 256
    if args.url:
        from echo_nemo.reward.client import RewardClient

        client = RewardClient(args.url)
        scorer = client.score
    else:
        from echo_nemo.reward.score import score as scorer
    total = 0.0
    unreadable: list[int] = []
    for start in track(
        range(0, len(completions), chunk), description="scoring", console=_stderr_console()
    ):
        batch = scorer(completions[start : start + chunk], answers[start : start + chunk])
        for i, s in enumerate(batch, start):
            total += s.reward
            if s.truth_error:
                unreadable.append(i + 1)
            print(json.dumps(s.to_dict()))
    print(
        f"mean reward {total / max(1, len(completions)):.4f} over {len(completions)} rows",
        file=sys.stderr,
    )
    if unreadable:
        shown = ", ".join(map(str, unreadable[:10])) + (", ..." if len(unreadable) > 10 else "")
        print(
            f"error: {len(unreadable)} of {len(completions)} rows of {args.input} have no readable "
            f"ground truth in field {args.answer_key!r} (rows {shown}; see their 'error')",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    return 0


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
