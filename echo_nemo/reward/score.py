"""The reward: ``score(completions, ground_truths) -> list[Score]``.

reward = 1 if the answer extracted from the completion (formats.py; code answers come
from executing the code in the sandbox) is math-verify-equivalent to the ground truth,
else 0. No format bonus. Each distinct (completion, ground truth) pair of a call is
evaluated once, inside a sandbox worker process (sandbox.py): parsing, execution (in a
forked, limited child) and math-verify (in the worker's main thread, where its
alarm-based timeout works). The calling process runs no model code and never calls
math-verify itself.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from echo_nemo.reward.formats import classify, parse_completion
from echo_nemo.reward.sandbox import Limits, WorkerPool, execute, register_pool


@dataclass(frozen=True)
class Score:
    """One completion's reward, its format, the extracted answer and why it failed."""

    reward: float
    format: str
    answer: str | None
    error: str | None

    def to_dict(self) -> dict:
        return {
            "reward": self.reward,
            "format": self.format,
            "answer": self.answer,
            "error": self.error,
        }


def evaluate_job(job: dict, limits: Limits, base_dir: str) -> dict:
    """Score one item. Runs in a sandbox worker's main thread (see sandbox.worker_main)."""
    from echo_nemo.reward.equivalence import is_equivalent

    parsed = parse_completion(job["completion"])
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
            reward = 1.0 if is_equivalent(answer, job["ground_truth"], from_code=from_code) else 0.0
        except Exception as e:  # math-verify's own timeout or parse failure: wrong, with a reason
            error = f"verification failed: {type(e).__name__}: {e}"
    return {"reward": reward, "format": parsed.format, "answer": answer, "error": error}


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def default_workers() -> int:
    """ECHO_NEMO_REWARD_WORKERS, else min(4, CPU count)."""
    return int(os.environ.get("ECHO_NEMO_REWARD_WORKERS", min(4, os.cpu_count() or 1)))


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


def _to_score(result: dict, completion: str) -> Score:
    if "reward" in result:
        return Score(float(result["reward"]), result["format"], result["answer"], result["error"])
    return Score(0.0, classify(completion), None, result.get("error") or "unknown failure")


def score(
    completions: list[str], ground_truths: list[str], *, pool: WorkerPool | None = None
) -> list[Score]:
    """Reward each completion against its ground truth, in order (see the module docstring)."""
    if len(completions) != len(ground_truths):
        raise ValueError(
            f"got {len(completions)} completions but {len(ground_truths)} ground truths"
        )
    for name, items in (("completions", completions), ("ground_truths", ground_truths)):
        bad = next((i for i, x in enumerate(items) if not isinstance(x, str)), None)
        if bad is not None:
            raise TypeError(f"{name}[{bad}] is {type(items[bad]).__name__}, expected str")
    if not completions:
        return []
    pool = pool or get_pool()
    # A converged policy samples the same completion many times per group (after RL, 1 in 6
    # of the quickstart's eval generations repeated one of its problem's): run each once.
    pairs = list(zip(completions, ground_truths))
    unique = list(dict.fromkeys(pairs))
    results = pool.map([{"completion": c, "ground_truth": g} for c, g in unique])
    by_pair = {pair: _to_score(r, pair[0]) for pair, r in zip(unique, results)}
    return [by_pair[pair] for pair in pairs]
