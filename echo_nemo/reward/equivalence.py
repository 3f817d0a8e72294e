"""Answer equivalence with math-verify, called only where its timeout works.

math-verify bounds parsing and comparison with ``signal.alarm``, which Python allows
only in the main thread of the main interpreter. From any other thread (a web
server's thread pool, a trainer's reward thread) math-verify 0.9 raises ValueError,
and the usual ``try: ... except Exception: return 0`` reward wrapper turns that into a
silent reward of 0 for a correct answer. So every function here refuses to run off the
main thread (RuntimeError), and the reward path calls them only from the main thread of
a sandbox worker process (sandbox.py), whose parent also kills it when a job overruns.

Two shortcuts keep math-verify off the common path without changing any verdict: a pair
of bare integers ("42", "-7", "025") is compared as integers, which is how math-verify
reads them (tests/reward/test_reward_equivalence.py checks the two agree), and a worker
parses each ground truth once (RL scores 8-16 samples of every question). On echo-lab's
integer answers math-verify's parse and verify cost ~6 ms of a ~30 ms reward.
"""

from __future__ import annotations

import functools
import re
import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

# Each math-verify call gets this many seconds (alarm-based, main thread only).
PARSE_TIMEOUT_S = 3
VERIFY_TIMEOUT_S = 3

_LATEX = [LatexExtractionConfig(boxed_match_priority=0)]
_EXPR = [ExprExtractionConfig()]
_INTEGER = re.compile(r"[+-]?[0-9]{1,100}")  # longer ones go to math-verify


def _require_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "math-verify needs the main thread (it times itself with signal.alarm); "
            "call echo_nemo.reward.score(), which runs it in a worker process"
        )


def _parse_latex(text: str) -> list:
    return parse(f"${text}$", extraction_config=_LATEX, parsing_timeout=PARSE_TIMEOUT_S)


def _parse_expr(text: str) -> list:
    return parse(text, extraction_config=_EXPR, parsing_timeout=PARSE_TIMEOUT_S)


def plain_integer(text: str) -> int | None:
    """The value of a bare integer ("42", " -7", "025"), else None ("1,234", "4.0", "x")."""
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


@functools.lru_cache(maxsize=4096)  # a timeout raises, and is not cached
def parse_ground_truth(ground_truth: str) -> list:
    """Parse a ground-truth string ("1,234", "\\\\frac{1}{2}", "025") into math-verify form.
    The result is cached and shared: callers must not change it."""
    _require_main_thread()
    text = ground_truth.strip()
    return _parse_latex(text) or _parse_expr(text)


def parse_answer(answer: str, *, from_code: bool) -> list:
    """Parse an extracted answer: a Python value's ``str()`` (``from_code``) or LaTeX."""
    _require_main_thread()
    text = answer.strip()
    if from_code:
        return _parse_expr(text) or _parse_latex(text)
    return _parse_latex(text) or _parse_expr(text)


def is_equivalent(answer: str, ground_truth: str, *, from_code: bool = False) -> bool:
    """True when math-verify finds ``answer`` equal to ``ground_truth`` (main thread only);
    two bare integers are compared directly (see the module docstring)."""
    _require_main_thread()
    a, b = plain_integer(answer), plain_integer(ground_truth)
    if a is not None and b is not None:
        return a == b
    gold = parse_ground_truth(ground_truth)
    pred = parse_answer(answer, from_code=from_code)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=VERIFY_TIMEOUT_S))
