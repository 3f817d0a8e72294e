"""Ground truths in the forms datasets store them, scored through the real sandbox pool."""

from __future__ import annotations

import json
import re

import pytest

from echo_nemo.data.sources import parse_gsm8k_answer
from echo_nemo.reward import score
from echo_nemo.reward.truth import UnreadableGroundTruth, gsm8k_final_answer, read_ground_truth

UNREADABLE = [
    "",
    "   ",
    "She sold the remaining eggs at the market.\nSo she made some money.",
    "Janet sells the eggs and makes money every day",
    "#### ",
    "The answer is:",
    "so \\boxed{12",
    None,
    [72],
    {"value": 72},
    True,
    float("nan"),
]


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.open() if line.strip()]


def _completion(value: str, kind: int) -> str:
    """The study's three formats, each giving `value`."""
    if kind == 0:
        return f"def simple_math_problem():\n    result = {value}\n    return result\n"
    if kind == 1:
        return f"Let's compute.\n<llm-code>\nx = {value}\nx\n</llm-code>\n<llm-code-output>\n{value}\n</llm-code-output>"
    return f"Adding it all up gives \\boxed{{{value}}}."


def test_read_ground_truth_rules() -> None:
    assert read_ground_truth("Janet sells 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18") == "18"
    assert read_ground_truth("#### 1,234") == "1234"
    assert read_ground_truth("#### $-5.") == "-5"
    assert read_ground_truth("so $x = \\boxed{\\frac{1}{2}}$ and \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.") == (
        "\\left( 3, \\frac{\\pi}{2} \\right)"
    )
    assert read_ground_truth("First 3 + 4 = 7.\nThe answer is: 7") == "7"
    assert read_ground_truth("The answer is 12.5.") == "12.5"
    assert read_ground_truth(72) == "72" and read_ground_truth(72.0) == "72"
    assert read_ground_truth(0.25) == "0.25" and read_ground_truth(-3) == "-3"
    assert read_ground_truth(" \\frac{14}{3} ") == "\\frac{14}{3}"
    assert read_ground_truth("$18$") == "18"
    assert read_ground_truth("\\text{Devon}") == "\\text{Devon}"
    assert read_ground_truth("\\text{east and west}") == "\\text{east and west}"
    for bad in UNREADABLE:
        with pytest.raises(UnreadableGroundTruth):
            read_ground_truth(bad)
    # the data loader's GSM8K parser is the same reading, plus its number check
    assert parse_gsm8k_answer("so 1,000 + 234 = 1,234\n#### 1,234") == gsm8k_final_answer("#### 1,234") == "1234"


def test_every_math500_answer_reads_as_itself(shared_data) -> None:
    """A bare answer as MATH stores it passes through unchanged (no prose false positives)."""
    rows = _jsonl(shared_data / "math500/test.jsonl")
    assert [read_ground_truth(r["answer"]) for r in rows] == [r["answer"].strip() for r in rows]


def test_gsm8k_worked_answer_and_hash_form_score_right_and_wrong(shared_data) -> None:
    rows = _jsonl(shared_data / "gsm8k/test.jsonl")[:120]
    numbers = [r["answer"].rsplit("####", 1)[1].strip().replace(",", "") for r in rows]
    completions, truths, expected = [], [], []
    for i, (row, n) in enumerate(zip(rows, numbers)):
        wrong = str(int(n) + 1) if n.lstrip("-").isdigit() else n + "1"
        for truth in (row["answer"], f"#### {n}"):  # the whole worked solution, and '#### N' alone
            for value, reward in ((n, 1.0), (wrong, 0.0)):
                completions.append(_completion(value, i % 3))
                truths.append(truth)
                expected.append(reward)
    results = score(completions, truths)
    bad = [(truths[i][-30:], completions[i][:60], r) for i, r in enumerate(results) if r.reward != expected[i]]
    assert bad == []
    assert all(r.error is None and r.truth in numbers for r in results)


def test_math500_solutions_and_metamath_lines_score_right_and_wrong(shared_data) -> None:
    # Polynomials are left out: math-verify's symbolic check of one can outlast its 3 s alarm
    # on a loaded 2-core machine (a timeout reads as "not equal"), whatever the ground truth.
    rows = [r for r in _jsonl(shared_data / "math500/test.jsonl") if not re.search(r"[a-z]\^", r["answer"])]
    rows = rows[:150]
    completions, truths, expected = [], [], []
    for row in rows:
        completions.append(f"We find \\boxed{{{row['answer']}}}.")
        truths.append(row["solution"])  # MATH's solution text: its last \boxed{}
        expected.append(1.0)
        if row["answer"].isdigit():
            completions.append(f"We find \\boxed{{{int(row['answer']) + 1}}}.")
            truths.append(row["solution"])
            expected.append(0.0)
    gsm = _jsonl(shared_data / "gsm8k/test.jsonl")[200:260]
    for i, row in enumerate(gsm):
        work, n = row["answer"].rsplit("####", 1)
        n = n.strip().replace(",", "")
        metamath = f"{work.strip()}\nThe answer is: {n}"  # MetaMathQA's response ending
        for value, reward in ((n, 1.0), (str(int(n) + 1), 0.0)):
            completions.append(_completion(value, i % 3))
            truths.append(metamath)
            expected.append(reward)
    results = score(completions, truths)
    assert sum(expected) == 150 + 60 and len(expected) > 300
    bad = [(truths[i][-40:], completions[i][-40:], r) for i, r in enumerate(results) if r.reward != expected[i]]
    assert bad == []


def test_numbers_as_ground_truths() -> None:
    truths = [72, 72.0, 0.5, -3, 1234, 72, 0.5, -3]
    completions = [_completion(v, i % 3) for i, v in enumerate(["72", "72", "0.5", "-3", "1234", "73", "0.25", "3"])]
    results = score(completions, truths)
    assert [r.reward for r in results] == [1.0] * 5 + [0.0] * 3
    assert [r.truth for r in results[:5]] == ["72", "72", "0.5", "-3", "1234"]


def test_unreadable_ground_truth_is_an_error_result_not_a_silent_zero() -> None:
    completions = [_completion("18", i % 3) for i in range(len(UNREADABLE))]
    results = score(completions, UNREADABLE)
    for truth, r in zip(UNREADABLE, results):
        assert r.reward == 0.0 and r.truth is None and r.truth_error, (truth, r)
        assert "ground truth" in r.error or "expected" in r.error, r.error
    # math-verify's own refusal of a bare truth is the same kind of error
    (odd,) = score(["\\boxed{1}"], ["\\text{}"])
    assert odd.truth_error and "unreadable ground truth" in odd.error
    # a readable truth beside them still scores
    ok = score(["\\boxed{18}", "\\boxed{18}"], ["#### 18", None])
    assert ok[0].reward == 1.0 and not ok[0].truth_error and ok[1].truth_error
