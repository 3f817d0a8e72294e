"""math-verify equivalence, and why it must run in a process's main thread."""

from __future__ import annotations

import threading

import pytest
from math_verify import parse, verify

from echo_nemo.reward import score
from echo_nemo.reward.equivalence import is_equivalent


@pytest.mark.parametrize(
    ("answer", "truth", "from_code", "expected"),
    [
        ("1,234", "1234", False, True),
        ("1234", "1,234", False, True),
        ("25", "025", False, True),  # AIME zero padding
        ("0.5", "\\frac{1}{2}", True, True),
        ("2/5", "\\frac{2}{5}", True, True),
        ("18", "18.0", True, True),
        ("\\dfrac{3}{4}", "\\frac34", False, True),
        ("\\$5", "5", False, True),
        ("19", "18", False, False),
        ("\\frac{1}{3}", "0.34", False, False),
    ],
)
def test_is_equivalent(answer: str, truth: str, from_code: bool, expected: bool) -> None:
    assert is_equivalent(answer, truth, from_code=from_code) is expected


def _naive_reward(answer: str, truth: str) -> float:
    """The usual reward wrapper: any exception counts as a wrong answer."""
    try:
        return float(verify(parse(f"${truth}$"), parse(f"${answer}$")))
    except Exception:
        return 0.0


def _in_thread(fn, *args):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)))
    thread.start()
    thread.join()
    return out


def test_math_verify_off_the_main_thread_silently_gives_zero() -> None:
    assert _naive_reward("\\frac{1}{2}", "0.5") == 1.0  # main thread: correct
    assert _in_thread(_naive_reward, "\\frac{1}{2}", "0.5") == [
        0.0
    ]  # worker thread: silently wrong


def test_our_equivalence_refuses_other_threads_loudly() -> None:
    errors = []

    def call():
        try:
            is_equivalent("\\frac{1}{2}", "0.5")
        except RuntimeError as e:
            errors.append(str(e))

    _in_thread(call)
    assert errors and "main thread" in errors[0]


def test_score_from_a_thread_still_verifies() -> None:
    """score() hands math-verify to a worker process's main thread, so threads are safe."""
    (result,) = _in_thread(score, ["so it is \\boxed{\\frac{1}{2}}"], ["0.5"])
    assert result[0].reward == 1.0


def test_bare_integers_compare_as_math_verify_reads_them() -> None:
    """The integer shortcut (no math-verify) gives math-verify's own verdict on every pair."""
    from echo_nemo.reward.equivalence import parse_answer, parse_ground_truth, plain_integer

    values = ["0", "-0", "7", "+7", "-7", "007", "42", " 42 ", "100", "1000000", "98765432109876543210"]
    for from_code in (False, True):
        for answer in values:
            for truth in values:
                assert plain_integer(answer) is not None and plain_integer(truth) is not None
                slow = bool(verify(parse_ground_truth(truth), parse_answer(answer, from_code=from_code)))
                assert is_equivalent(answer, truth, from_code=from_code) is slow, (answer, truth)
    assert [plain_integer(t) for t in ("1,234", "4.0", "x", "", "1" * 101)] == [None] * 5
