"""Echo-lab: a synthetic grade-school math corpus rendered in the study's three formats.

A problem is built once, as a small program: *givens* (numbers stated in the question)
and *steps* (named arithmetic on earlier quantities). The same program is then rendered
three ways, shaped like the real data in ../shared/data:

- ``tinygsm``: ``def simple_math_problem() -> int:`` with the question as docstring, the
  givens and steps as assignments, ``result = ...`` and ``return result`` (TinyGSM).
- ``llm_code``: "Let's solve this problem using Python code.", an ``<llm-code>`` block
  ending in the answer's variable, the true ``<llm-code-output>``, and a ``\\boxed{}``
  conclusion (OpenMathInstruct-1).
- ``text``: one sentence per step with the arithmetic written out (``$3 * 4 = 12$``),
  ending in ``\\boxed{}`` (OpenMathInstruct-2). A model must do that arithmetic itself,
  which is what makes this format harder for a small model (see ECHOLAB.md).

Every value is exact: each step is evaluated with ``fractions.Fraction`` and rejected
unless it is a non-negative integer, so the code's float output (``12.0`` after a ``/``)
is exactly the stated answer. Train and test problems are disjoint by their parameters:
a problem's key is (template, givens) and a hash of that key decides its split.

The program's building blocks and the template registry are in echolab_program.py, the
problem types in echolab_templates.py.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from echo_nemo.data.echolab_program import TEMPLATES, Ctx, Q, Reject, Solution, python_repr
from echo_nemo.data.echolab_templates import PROSE  # importing it registers the TEMPLATES
from echo_nemo.reward.formats import FORMATS

TEST_MODULUS = 10  # one parameter key in ten belongs to the test split


@dataclass
class EchoProblem:
    """One generated problem: question, program, answer, and its split key."""

    template: str
    question: str
    solution: Solution
    answer: Q
    conclusion: str  # with {ans}: "Sam spends {ans} dollars"

    @property
    def answer_str(self) -> str:
        return str(int(self.answer.value))

    @property
    def num_steps(self) -> int:
        return len(self.solution.steps)

    @property
    def key(self) -> tuple:
        return (self.template, tuple(v for _, v in self.solution.givens))

    def render(self, fmt: str, misquote: random.Random | None = None) -> str:
        """The solution text in one format (the document is question, blank line, this).

        `misquote` (tinygsm only): copy one given wrongly, see `render_tinygsm`."""
        if fmt == "tinygsm":
            return render_tinygsm(self, misquote)
        if fmt == "llm_code":
            return render_llm_code(self)
        if fmt == "text":
            return render_text(self)
        raise ValueError(f"unknown echo-lab format {fmt!r}; expected one of {FORMATS[:-1]}")

    def document(self, fmt: str, misquote: random.Random | None = None) -> str:
        return f"{self.question}\n\n{self.render(fmt, misquote)}"


def split_of(key: tuple) -> str:
    """'test' for one key in TEST_MODULUS (by a stable hash of the parameters), else 'train'."""
    h = int.from_bytes(hashlib.sha1(repr(key).encode()).digest()[:8], "big")
    return "test" if h % TEST_MODULUS == 0 else "train"


# ----------------------------------------------------------------------------- renderers
def _code_lines(p: EchoProblem, misquote: random.Random | None = None) -> list[str]:
    givens = list(p.solution.givens)
    if misquote is not None:  # one given copied wrongly from the question: off by 1..3
        i = misquote.randrange(len(givens))
        name, value = givens[i]
        delta = misquote.choice([d for d in (-3, -2, -1, 1, 2, 3) if value + d >= 0])
        givens[i] = (name, value + delta)
    lines = [f"{name} = {value}" for name, value in givens]
    lines += [f"{s.name} = {s.expr.code}" for s in p.solution.steps]
    return lines


def render_tinygsm(p: EchoProblem, misquote: random.Random | None = None) -> str:
    """TinyGSM's function; with `misquote`, one given is copied wrongly (a wrong answer)."""
    body = "\n".join("    " + line for line in _code_lines(p, misquote))
    return (
        "def simple_math_problem() -> int:\n"
        '    """\n'
        f"    {p.question}\n"
        '    """\n'
        f"{body}\n"
        f"    result = {p.answer.code}\n"
        "    return result"
    )


def render_llm_code(p: EchoProblem) -> str:
    code = "\n".join(_code_lines(p) + [p.answer.code])
    out = python_repr(p.answer.value, p.answer.is_float)
    ans = p.conclusion.format(ans=f"\\boxed{{{p.answer_str}}}")
    return (
        "Let's solve this problem using Python code.\n"
        f"<llm-code>\n{code}\n</llm-code>\n"
        f"<llm-code-output>\n{out}\n</llm-code-output>\n"
        f"Thus {ans}."
    )


def render_text(p: EchoProblem) -> str:
    lines = []
    for s in p.solution.steps:
        unit = f" {s.unit}" if s.unit else ""
        lines.append(f"{s.text} ${s.expr.math} = {int(s.expr.value)}${unit}.")
    lines.append(f"Thus, {p.conclusion.format(ans=chr(92) + 'boxed{' + p.answer_str + '}')}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- generation
def generate_one(rng: random.Random, steps: int, max_number: int, split: str) -> EchoProblem:
    """One problem with exactly `steps` steps from a template that supports it, in `split`."""
    choices = [t for t in TEMPLATES.values() if t.steps[0] <= steps <= t.steps[1]]
    for _ in range(1000):
        t = rng.choice(choices)
        try:
            question, sol, ans, conclusion = t.fn(Ctx(rng, max_number, steps))
        except Reject:
            continue
        p = EchoProblem(t.name, question, sol, ans, conclusion)
        if p.num_steps != steps:
            raise AssertionError(f"template {t.name} made {p.num_steps} steps, asked {steps}")
        if split_of(p.key) == split:
            return p
    raise RuntimeError(f"could not sample a {steps}-step problem (max_number={max_number})")


def generate(
    n: int,
    *,
    seed: int = 0,
    split: str = "train",
    min_steps: int = 1,
    max_steps: int = 3,
    max_number: int = 20,
    step_weights: Sequence[float] | None = None,
) -> Iterator[EchoProblem]:
    """`n` problems of `split`, deterministic in all arguments.

    Step counts follow `step_schedule` (without weights they cycle over [min_steps,
    max_steps], every difficulty an equal share); the split's rng stream is separate from
    the other split's (seed, split).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 1 <= min_steps <= max_steps <= 5:
        raise ValueError(f"need 1 <= min_steps <= max_steps <= 5, got {min_steps}, {max_steps}")
    if max_number < 5:
        raise ValueError(f"max_number must be >= 5, got {max_number}")
    rng = random.Random(f"echolab/{seed}/{split}")
    for steps in step_schedule(n, min_steps, max_steps, step_weights):
        yield generate_one(rng, steps, max_number, split)


def step_schedule(n: int, min_steps: int, max_steps: int, weights: Sequence[float] | None = None) -> Iterator[int]:
    """The step count of each of `n` problems: weights w_k (one per k in [min_steps,
    max_steps], normalised to p_k; default equal) are met as closely as any prefix allows,
    without randomness: problem i gets

        k_i = argmax_k (p_k * (i + 1) - c_k(i))     (c_k(i): problems with k steps before i;
                                                     ties: the fewest steps)

    so every prefix holds within one problem of p_k x its length of each k; equal weights
    give the cycle min_steps, ..., max_steps, min_steps, ...
    """
    span = max_steps - min_steps + 1
    w = [1.0] * span if weights is None else [float(x) for x in weights]
    if len(w) != span or any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"step_weights needs {span} non-negative weights (steps {min_steps}..{max_steps}) "
                         f"with a positive sum, got {list(weights or [])}")
    p = [x / sum(w) for x in w]
    counts = [0] * span
    for i in range(n):
        k = max(range(span), key=lambda j: (p[j] * (i + 1) - counts[j], -j))
        counts[k] += 1
        yield min_steps + k


# ----------------------------------------------------------------------------- background prose
def background_document(rng: random.Random, max_number: int = 20) -> str:
    """A few paragraphs of explanatory math prose (stands in for FineMath)."""
    k = rng.randint(2, 3)
    return "\n\n".join(rng.choice(PROSE)(rng, max_number) for _ in range(k))
