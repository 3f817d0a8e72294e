"""The fair echo-lab knobs: off by default (today's corpus byte for byte), and each does what it
says (worked text arithmetic that checks out, a measured rate of wrong programs)."""

from __future__ import annotations

import ast
import hashlib
import re
from fractions import Fraction

import pytest

from echo_nemo.data import echolab
from echo_nemo.data.config import EchoLabConfig
from echo_nemo.data.echolab_fair import TEXT_OPENING, worked_op
from echo_nemo.data.sources import SourceSpec, load_documents, load_problems
from echo_nemo.errors import UserError
from echo_nemo.reward.formats import classify, last_boxed, llm_code_blocks

SOURCES = ("echo_tg", "echo_omi1", "echo_omi2", "echo_fm3")


def _hash(cfg: EchoLabConfig) -> str:
    d = hashlib.sha256()
    for name in SOURCES:
        for doc in load_documents(SourceSpec(name=name), cfg):
            d.update(doc.encode())
            d.update(b"\0")
    return d.hexdigest()


# sha256 of the documents the generator wrote before the fair knobs existed (same configs)
DEFAULT_HASH = "ef8cbcf940eb1183e710ebf3897300bdcbc5da72249efc670575559f00b31b7e"
MISQUOTE_HASH = "f69c896d6f3c54a3035055bd56dff316c626ef3b5cee0eaed57bdc8e6d9e22d1"
PROBLEMS_HASH = "5f5074716a55e799710504ec68d28f2cb51628759678b29aeaa5d6949acb9b35"


def test_defaults_give_todays_corpus_byte_for_byte():
    assert _hash(EchoLabConfig(num_problems=300, num_background=50)) == DEFAULT_HASH
    assert _hash(EchoLabConfig(num_problems=300, num_background=50, tinygsm_misquote=0.3, max_steps=5,
                               seed=3)) == MISQUOTE_HASH
    d = hashlib.sha256()
    for p in load_problems("echolab_test", limit=200) + load_problems("echolab_test_hard", limit=100):
        d.update(f"{p.id}|{p.question}|{p.answer}".encode())
    assert d.hexdigest() == PROBLEMS_HASH


def _docs(name: str, **kw) -> list[str]:
    return list(load_documents(SourceSpec(name=name), EchoLabConfig(**kw)))


def test_each_knob_leaves_the_other_formats_alone():
    base = dict(num_problems=60, num_background=5, max_steps=5, tinygsm_misquote=0.2)
    steps = dict(base, text_style="steps")
    assert _docs("echo_tg", **steps) == _docs("echo_tg", **base)
    assert _docs("echo_omi1", **steps) == _docs("echo_omi1", **base)
    assert _docs("echo_omi2", **steps) != _docs("echo_omi2", **base)
    wrong = dict(base, tinygsm_wrong=0.5, llm_code_wrong=0.5)
    assert _docs("echo_omi2", **wrong) == _docs("echo_omi2", **base)
    assert _docs("echo_fm3", **wrong) == _docs("echo_fm3", **base)


def test_worked_operations():
    assert worked_op(17, "*", 12) == ["17 * 12", "17 * 10 + 17 * 2", "170 + 34", "204"]
    assert worked_op(23, "*", 7) == ["23 * 7", "7 * 20 + 7 * 3", "140 + 21", "161"]
    assert worked_op(7, "*", 8) == ["7 * 8", "56"]
    assert worked_op(47, "+", 38) == ["47 + 38", "47 + 30 + 8", "77 + 8", "85"]
    assert worked_op(85, "-", 38) == ["85 - 38", "85 - 30 - 8", "55 - 8", "47"]
    assert worked_op(147, "+", 123) == ["147 + 123", "147 + 100 + 20 + 3", "247 + 20 + 3", "267 + 3", "270"]
    assert worked_op(84, "/", 7) == ["84 / 7", "(70 + 14) / 7", "10 + 2", "12"]
    assert worked_op(56, "/", 7) == ["56 / 7", "8"]


def _value(expr: str) -> Fraction:
    def ev(n: ast.expr) -> Fraction:
        if isinstance(n, ast.Constant):
            return Fraction(n.value)
        a, b = ev(n.left), ev(n.right)  # type: ignore[attr-defined]
        return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(n.op)) if not isinstance(n.op, ast.Div) \
            else a / b  # type: ignore[attr-defined]
    return ev(ast.parse(expr, mode="eval").body)


def test_step_by_step_text_checks_out_arithmetically():
    cfg = dict(num_problems=150, max_steps=5, max_number=30, text_style="steps")
    problems = list(echolab.generate(150, seed=0, split="train", min_steps=1, max_steps=5, max_number=30))
    docs = _docs("echo_omi2", **cfg)
    chains = 0
    for p, doc in zip(problems, docs, strict=True):
        question, _, solution = doc.partition("\n\n")
        assert question == p.question and solution.startswith(TEXT_OPENING + "\n")
        assert classify(solution) == "text" and last_boxed(solution) == p.answer_str
        values = [int(v) for v in re.findall(r"^That is \$(\d+)\$", solution, re.M)]
        assert values == [int(s.expr.value) for s in p.solution.steps]
        for line in solution.splitlines():
            if line.startswith("$") and line.endswith("$"):
                members = [_value(m) for m in line.strip("$").split(" = ")]
                assert len(set(members)) == 1, line  # every member of a chain has one value
                chains += 1
    assert chains > 300


def _run_code(solution: str, fmt: str) -> Fraction:
    """The program's value (test-only: our own generated arithmetic, run in-process)."""
    env: dict = {}
    if fmt == "llm_code":
        lines = llm_code_blocks(solution)[0].splitlines()
        exec("\n".join(lines[:-1]), env)  # noqa: S102
        return Fraction(eval(lines[-1], env)).limit_denominator(1000)  # noqa: S307
    exec(solution, env)  # noqa: S102
    return Fraction(env["simple_math_problem"]()).limit_denominator(1000)


@pytest.mark.parametrize("fmt, source, knob", [("tinygsm", "echo_tg", "tinygsm_wrong"),
                                               ("llm_code", "echo_omi1", "llm_code_wrong")])
def test_wrong_program_rate_is_what_the_knob_says(fmt, source, knob):
    n, rate = 400, 0.3
    problems = list(echolab.generate(n, seed=1, split="train", min_steps=1, max_steps=3, max_number=20))
    docs = _docs(source, num_problems=n, seed=1, **{knob: rate})
    wrong = 0
    for p, doc in zip(problems, docs, strict=True):
        solution = doc.partition("\n\n")[2]
        assert classify(solution) == fmt
        got = _run_code(solution, fmt)
        wrong += got != p.answer.value
        if fmt == "llm_code":  # self-consistent: the shown output is the program's, and it is boxed
            out = re.search(r"<llm-code-output>\n(.*)\n</llm-code-output>", solution).group(1)
            assert Fraction(out) == got and Fraction(last_boxed(solution)) == got
    # binomial sd at n=400, p=0.3 is 0.023: within 3 sd
    assert abs(wrong / n - rate) < 0.07, wrong / n
    assert all(d.partition("\n\n")[2] == p.render(fmt) for p, d in
               zip(problems, _docs(source, num_problems=n, seed=1), strict=True))  # rate 0: all right


def test_wrong_by_template_makes_whole_problem_types_wrong_the_same_way():
    from echo_nemo.data.echolab_fair import wrong_templates

    n, rate = 300, 0.3
    problems = list(echolab.generate(n, seed=2, split="train", min_steps=1, max_steps=3, max_number=20))
    docs = _docs("echo_omi1", num_problems=n, seed=2, llm_code_wrong=rate, wrong_by="template")
    chosen = wrong_templates(EchoLabConfig(seed=2), "llm_code", rate)
    assert len(chosen) == round(rate * len(echolab.TEMPLATES))
    assert chosen == wrong_templates(EchoLabConfig(seed=2), "llm_code", rate)  # drawn once per format and seed
    changed: dict[str, list[int]] = {}
    for p, doc in zip(problems, docs, strict=True):
        solution = doc.partition("\n\n")[2]
        wrong = _run_code(solution, "llm_code") != p.answer.value
        assert wrong == (p.template in chosen), p.template
        if wrong:  # which step of the program is changed
            lines = [a for a, b in zip(solution.splitlines(), p.render("llm_code").splitlines()) if a != b]
            names = [st.name for st in p.solution.steps]
            changed.setdefault(p.template, []).append(names.index(lines[0].split(" = ")[0]))
    # the same way every time: the first step whose swap changes the answer (nearly always the first)
    every = [i for v in changed.values() for i in v]
    assert len(changed) > 5 and every.count(0) >= 0.9 * len(every), changed
    assert all(2 * v.count(0) > len(v) for v in changed.values()), changed


@pytest.mark.parametrize("knob, value, needle", [("text_style", "prose", "text_style must be"),
                                                 ("tinygsm_wrong", 1.5, "tinygsm_wrong must be a share"),
                                                 ("llm_code_wrong", -0.1, "llm_code_wrong must be a share"),
                                                 ("wrong_by", "batch", "wrong_by must be document or template")])
def test_bad_knob_values_are_user_errors(knob, value, needle):
    with pytest.raises(UserError, match=needle):
        EchoLabConfig(**{knob: value}).validate()
