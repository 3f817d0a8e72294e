"""score() on the real data in ../shared/data, through the real sandbox pool."""

from __future__ import annotations

import json
import re

from echo_nemo.reward import Score, score
from echo_nemo.reward.equivalence import is_equivalent

TINYGSM_FILE = "tinygsm_style/ThomasTheMaker_TinyGSM_gpt4.1_samples.json"


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.open() if line.strip()]


def test_tinygsm_style_solutions_execute(shared_data) -> None:
    rows = json.loads((shared_data / TINYGSM_FILE).read_text())
    completions = [row["assistant"] for row in rows]
    # No reference answers in this file: score against "0" and check that each ran.
    results = score(completions, ["0"] * len(rows))
    no_answer = [i for i, s in enumerate(results) if s.answer is None]
    # 907's function body is not indented (not Python, so "other"); 183, 751, 799 and 865
    # return None on purpose (the solutions say the question lacks information).
    assert no_answer == [183, 751, 799, 865, 907], [results[i] for i in no_answer]
    assert results[907].format == "other"
    for i in (183, 751, 799, 865):
        assert results[i].error == "the function returned None"
    ran = [s for i, s in enumerate(results) if i not in no_answer]
    assert all(s.format == "tinygsm" and s.error is None for s in ran)
    numbers = [s for s in ran if re.fullmatch(r"-?\d+(\.\d+)?(e[+-]?\d+)?", s.answer)]
    assert len(numbers) >= 960  # the rest return tuples or strings ("(4, 6)", "11:30 am")


def test_omi1_code_answers_agree_as_often_as_the_files_own(shared_data) -> None:
    rows = _jsonl(shared_data / "openmathinstruct1/openmathinstruct.test")
    results = score([r["generated_solution"] for r in rows], [r["expected_answer"] for r in rows])
    code = [(s, r) for s, r in zip(results, rows) if s.format == "llm_code"]
    assert len(code) == 78
    ours = sum(s.reward for s, _ in code)
    theirs = sum(is_equivalent(r["predicted_answer"], r["expected_answer"]) for _, r in code)
    assert ours >= theirs
    assert ours >= 0.9 * len(code)


def test_omi2_text_solutions_score_one(shared_data) -> None:
    rows = _jsonl(shared_data / "openmathinstruct2/openmathinstruct2.test")
    results = score([r["generated_solution"] for r in rows], [r["expected_answer"] for r in rows])
    assert [s.format for s in results] == ["text"] * 100
    assert [i for i, s in enumerate(results) if s.reward != 1.0] == []


def test_gsm8k_boxed_answers_score_one_and_perturbed_zero(shared_data) -> None:
    rows = _jsonl(shared_data / "gsm8k/test.jsonl")
    truths = [r["answer"].split("####")[-1].strip() for r in rows]
    assert len(truths) == 1319
    wrong = [str(int(t.replace(",", "")) + 1) for t in truths]
    completions = [f"So the total is \\boxed{{{t}}}." for t in truths + wrong]
    results = score(completions, truths + truths)
    assert [s.reward for s in results[:1319]] == [1.0] * 1319
    assert [s.reward for s in results[1319:]] == [0.0] * 1319


def test_each_format_scores_and_reports() -> None:
    completions = [
        "def simple_math_problem() -> float:\n    return 36 / 2\n",
        "```python\ndef solve():\n    return 17\n```",
        "x\n<llm-code>\nimport sympy as sp\nsp.Rational(36, 2)\n</llm-code>\n\\boxed{99}",
        "<llm-code>\nprint(18)\n</llm-code>\n<llm-code-output>\n18\n</llm-code-output>\n\\boxed{18}",
        "<llm-code>\n1/0\n</llm-code>\nThe answer is \\boxed{18}",
        "We define the default. Then \\boxed{18}",
        "eighteen",
        "def simple_math_problem():\n    return None\n",
    ]
    results = score(completions, ["18"] * len(completions))
    assert results[0] == Score(1.0, "tinygsm", "18", None, "18")
    assert results[1] == Score(0.0, "tinygsm", "17", None, "18")
    assert results[2] == Score(1.0, "llm_code", "18", None, "18")  # executed value, not the boxed 99
    assert results[3] == Score(1.0, "llm_code", "18", None, "18")  # print() gives no value: boxed
    assert results[4] == Score(1.0, "llm_code", "18", None, "18")  # code failed: boxed
    assert results[5] == Score(1.0, "text", "18", None, "18")
    assert results[6].format == "other" and results[6].reward == 0.0 and results[6].error
    assert results[7].reward == 0.0 and "None" in results[7].error


def test_one_completion_cannot_tamper_with_the_next() -> None:
    """Code that patches the verifier or builtins dies with its forked child."""
    tamper = (
        "def simple_math_problem():\n"
        "    import builtins, sys\n"
        "    sys.modules['math_verify'].verify = lambda *a, **k: True\n"
        "    builtins.str = lambda x: '18'\n"
        "    return 1\n"
    )
    # distinct texts, so each is its own job (identical ones are run once)
    results = score([tamper] + [f"Try {i}: \\boxed{{5}}" for i in range(8)], ["18"] * 9)
    assert [s.reward for s in results] == [0.0] * 9


def test_repeated_completions_run_once_and_keep_their_order() -> None:
    """A group's identical samples are executed once; every input still gets its score."""
    from echo_nemo.reward.score import get_pool

    pool = get_pool()
    sent: list[dict] = []

    class Counting:
        def map(self, jobs: list[dict]) -> list[dict]:
            sent.extend(jobs)
            return pool.map(jobs)

    right = "<llm-code>\n6 * 3\n</llm-code>\n\\boxed{18}"
    wrong = "def simple_math_problem():\n    return 6 + 3\n"
    completions = [right, wrong, right, right, wrong, right]
    truths = ["18", "18", "18", "9", "18", "18"]  # the same text against another truth is another job
    results = score(completions, truths, pool=Counting())
    assert [s.reward for s in results] == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert [s.format for s in results] == ["llm_code", "tinygsm", "llm_code", "llm_code", "tinygsm", "llm_code"]
    assert len(sent) == 3
