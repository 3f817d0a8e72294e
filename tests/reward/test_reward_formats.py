"""Format classification and answer location, by parsing (no execution here)."""

from __future__ import annotations

import json

import pytest

from echo_nemo.reward.formats import classify, entry_function, last_boxed, parse_completion

TINYGSM = 'def simple_math_problem() -> int:\n    """Two apples."""\n    result = 1 + 1\n    return result\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TINYGSM, "tinygsm"),
        ("Here is the code:\n```python\n" + TINYGSM + "```\nDone.", "tinygsm"),
        ("```\n" + TINYGSM + "```", "tinygsm"),
        (TINYGSM + "\nQuestion: what is 2+2? The answer is \\boxed{4}", "tinygsm"),
        (
            "Let's compute.\n<llm-code>\nx = 2\nx * 3\n</llm-code>\n<llm-code-output>\n6\n</llm-code-output>\nSo \\boxed{6}.",
            "llm_code",
        ),
        ("<llm-code>\ndef f():\n    return 1\nf()\n</llm-code>", "llm_code"),
        ("We define x as the default number of apples, 3, so the answer is \\boxed{3}.", "text"),
        (
            "By default we define the function f(x) = x^2; def is short for define. \\boxed{4}",
            "text",
        ),
        ("def ine the answer: \\boxed{5}", "text"),
        ("We define the default value but never finish", "other"),
        ("<llm-code>\nx = 1\n", "other"),  # an unterminated block is not a block
        ("", "other"),
    ],
)
def test_classify(text: str, expected: str) -> None:
    assert classify(text) == expected


def test_last_boxed_balances_braces_and_takes_the_last() -> None:
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed {x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{unclosed") is None
    assert last_boxed("no box") is None


def test_entry_function_prefers_simple_math_problem_else_the_only_argless_one() -> None:
    import ast

    assert (
        entry_function(ast.parse("def a():\n    pass\ndef simple_math_problem():\n    pass"))
        == "simple_math_problem"
    )
    assert (
        entry_function(ast.parse("def solve(n=3):\n    return n\ndef helper(x):\n    return x"))
        == "solve"
    )
    assert entry_function(ast.parse("def a():\n    pass\ndef b():\n    pass")) is None  # ambiguous
    assert entry_function(ast.parse("def a(x):\n    return x")) is None


def test_parse_completion_cuts_the_function_out_of_prose() -> None:
    parsed = parse_completion("Sure! Let me write it.\n" + TINYGSM + "That is all.")
    assert parsed.format == "tinygsm"
    assert parsed.entry == "simple_math_problem"
    assert parsed.program.startswith("def simple_math_problem")
    assert "That is all" not in parsed.program


def test_real_data_formats(shared_data) -> None:
    tiny = json.loads(
        (shared_data / "tinygsm_style/ThomasTheMaker_TinyGSM_gpt4.1_samples.json").read_text()
    )
    formats = [classify(row["assistant"]) for row in tiny]
    # Row 907's function body is not indented (not Python): the one exception in the file.
    assert [i for i, f in enumerate(formats) if f != "tinygsm"] == [907]
    omi1 = [
        json.loads(line)
        for line in (shared_data / "openmathinstruct1/openmathinstruct.test").open()
    ]
    for row in omi1:
        has_block = "</llm-code>" in row["generated_solution"]
        assert classify(row["generated_solution"]) == ("llm_code" if has_block else "text")
    assert sum(classify(r["generated_solution"]) == "llm_code" for r in omi1) == 78
    omi2 = [
        json.loads(line)
        for line in (shared_data / "openmathinstruct2/openmathinstruct2.test").open()
    ]
    assert {classify(r["generated_solution"]) for r in omi2} == {"text"}
