"""The reward: ``score(completions, ground_truths) -> list[Score]``.

reward = 1 if the answer extracted from the completion (formats.py; code answers come
from executing the code in the sandbox) is math-verify-equivalent to the answer read
from the ground truth (truth.py: a number, GSM8K's ``#### N``, a MATH solution's last
``\\boxed{}``, MetaMathQA's ``The answer is: X``, a bare expression), else 0. No format
bonus. A ground truth with no readable answer gives that item reward 0 with an `error`
and ``truth=None`` (``Score.truth_error``), never a silent 0.

Each distinct (completion, ground truth) pair of a call is evaluated once, inside a
sandbox worker process (sandbox.py): parsing, execution (in a forked, limited child) and
math-verify (in the worker's main thread, where its alarm-based timeout works). The
calling process runs no model code and never calls math-verify itself. `score_async`
is the same function for an asyncio caller (the server's micro-batcher).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from echo_nemo import env
from echo_nemo.reward.formats import classify, parse_completion
from echo_nemo.reward.sandbox import Limits, WorkerPool, execute, register_pool
from echo_nemo.reward.truth import UnreadableGroundTruth, read_ground_truth


@dataclass(frozen=True)
class Score:
    """One completion's reward, its format, the extracted answer, why it failed, and the
    answer read from the ground truth (None when none could be read)."""

    reward: float
    format: str
    answer: str | None
    error: str | None
    truth: str | None = None

    @property
    def truth_error(self) -> bool:
        """True when the item failed because its ground truth holds no readable answer."""
        return self.truth is None and self.error is not None

    def to_dict(self) -> dict:
        return {
            "reward": self.reward,
            "format": self.format,
            "answer": self.answer,
            "error": self.error,
            "truth": self.truth,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Score:
        return cls(float(d["reward"]), d["format"], d["answer"], d["error"], d.get("truth"))


def evaluate_job(job: dict, limits: Limits, base_dir: str) -> dict:
    """Score one item. Runs in a sandbox worker's main thread (see sandbox.worker_main)."""
    # math-verify (and sympy) load only in the sandbox worker, never in the caller's process
    from echo_nemo.reward.equivalence import is_equivalent, parse_ground_truth, plain_integer

    parsed = parse_completion(job["completion"])
    truth = job["ground_truth"]
    if plain_integer(truth) is None:  # checked before any code runs: a bad truth is the dataset's error
        try:
            gold = parse_ground_truth(truth)
        except Exception as e:  # math-verify's own timeout: the truth cannot be read
            gold, why = [], f"{type(e).__name__}: {e}"
        else:
            why = "math-verify finds no expression in it"
        if not gold:
            error = f"unreadable ground truth {truth[:80]!r}: {why}"
            return {"reward": 0.0, "format": parsed.format, "answer": None, "error": error,
                    "truth": None}  # fmt: skip
    answer, error, from_code = None, None, False
    if parsed.format == "tinygsm":
        if parsed.entry is None:
            error = "no top-level function callable without arguments"
        else:
            run = execute(
                {"kind": "tinygsm", "program": parsed.program, "entry": parsed.entry},
                limits,
                base_dir,
            )
            answer, error, from_code = run.get("value"), run.get("error"), True
            if answer is None and error is None:
                error = "the function returned None"
    elif parsed.format == "llm_code":
        run = execute({"kind": "llm_code", "blocks": parsed.blocks}, limits, base_dir)
        answer, error, from_code = run.get("value"), run.get("error"), True
        if answer is None and not run.get("fatal"):
            # The format's rule: no value from the code -> the boxed answer.
            answer, from_code = parsed.boxed, False
            error = None if answer is not None else (error or "code gave no value and no \\boxed{}")
    elif parsed.format == "text":
        answer = parsed.boxed
    else:
        error = "no answer found (no function, <llm-code> block or \\boxed{})"
    reward = 0.0
    if answer is not None:
        try:
            reward = 1.0 if is_equivalent(answer, truth, from_code=from_code) else 0.0
        except Exception as e:  # math-verify's own timeout or parse failure: wrong, with a reason
            error = f"verification failed: {type(e).__name__}: {e}"
    return {"reward": reward, "format": parsed.format, "answer": answer, "error": error,
            "truth": truth}  # fmt: skip


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def default_workers() -> int:
    """ECHO_NEMO_REWARD_WORKERS, else min(4, CPU count)."""
    return env.reward_workers()


def get_pool() -> WorkerPool:
    """The module's worker pool, created on first use, reused, closed at exit."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.closed:
            _POOL = register_pool(WorkerPool(default_workers()))
        return _POOL


def close_pool() -> None:
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.close()
            _POOL = None


def _to_score(result: dict, pair: tuple[str, str]) -> Score:
    if "reward" in result:
        return Score(float(result["reward"]), result["format"], result["answer"], result["error"],
                     result.get("truth", pair[1]))  # fmt: skip
    # the worker failed (killed, hung): the completion's fault or ours, not the truth's
    return Score(0.0, classify(pair[0]), None, result.get("error") or "unknown failure", pair[1])


@dataclass
class _Plan:
    """A call's items: per item its (completion, truth) pair or an early Score, and the
    distinct pairs to send to the sandbox."""

    pairs: list[tuple[str, str] | Score]
    unique: list[tuple[str, str]]

    @property
    def jobs(self) -> list[dict]:
        return [{"completion": c, "ground_truth": t} for c, t in self.unique]

    def scores(self, results: list[dict]) -> list[Score]:
        by_pair = {pair: _to_score(r, pair) for pair, r in zip(self.unique, results)}
        return [p if isinstance(p, Score) else by_pair[p] for p in self.pairs]


def _plan(completions: Sequence[str], ground_truths: Sequence[object]) -> _Plan:
    if len(completions) != len(ground_truths):
        raise ValueError(
            f"got {len(completions)} completions but {len(ground_truths)} ground truths"
        )
    bad = next((i for i, x in enumerate(completions) if not isinstance(x, str)), None)
    if bad is not None:
        raise TypeError(f"completions[{bad}] is {type(completions[bad]).__name__}, expected str")
    pairs: list[tuple[str, str] | Score] = []
    for completion, raw in zip(completions, ground_truths):
        try:
            pairs.append((completion, read_ground_truth(raw)))
        except UnreadableGroundTruth as e:
            pairs.append(Score(0.0, classify(completion), None, str(e), None))
    # A converged policy samples the same completion many times per group (after RL, 1 in 6
    # of the quickstart's eval generations repeated one of its problem's): run each once.
    unique = list(dict.fromkeys(p for p in pairs if not isinstance(p, Score)))
    return _Plan(pairs, unique)


def score(
    completions: Sequence[str], ground_truths: Sequence[object], *, pool: WorkerPool | None = None
) -> list[Score]:
    """Reward each completion against its ground truth, in order (see the module docstring).

    Ground truths may be strings in any form truth.py reads, or numbers.
    """
    plan = _plan(completions, ground_truths)
    if not plan.unique:
        return plan.scores([])
    return plan.scores((pool or get_pool()).map(plan.jobs))


async def score_async(
    completions: Sequence[str], ground_truths: Sequence[object], pool: WorkerPool
) -> list[Score]:
    """`score` for an asyncio caller: the jobs go to the pool's queue, nothing blocks the loop."""
    plan = _plan(completions, ground_truths)
    futures = [asyncio.wrap_future(pool.submit(job)) for job in plan.jobs]
    return plan.scores(list(await asyncio.gather(*futures)))
