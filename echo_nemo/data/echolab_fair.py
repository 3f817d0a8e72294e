"""Fair echo-lab: opt-in knobs that let the formats compete on learnability.

In the default corpus the `text` format must do its arithmetic in the model's head
(``$17 * 12 = 204$``) while both code formats hand it to the interpreter, so text loses by
construction. Two knobs of `EchoLabConfig` change that; at their defaults the corpus is
today's, byte for byte (this module is not called):

- ``text_style: steps``: the text solution opens with ``TEXT_OPENING`` and works every
  operation out in small steps a small model can learn: the step's expression is reduced
  one operation at a time, and an operation on multi-digit numbers is written by place
  value first::

      The apples cost $17 * 12 + 5$ dollars.
      $17 * 12 = 17 * 10 + 17 * 2 = 170 + 34 = 204$
      $204 + 5 = 209$
      That is $209$ dollars.

  Multiplication splits the operand with more non-zero digits into its place parts
  (a * b = a * b_1 + a * b_2 + ...); addition and subtraction add or take away the second
  operand's place parts one at a time (47 + 38 = 47 + 30 + 8 = 77 + 8); division with a
  quotient of two or more digits splits the dividend into multiples of the divisor
  (84 / 7 = (70 + 14) / 7 = 10 + 2). Single-digit facts (7 * 8, 56 / 7) stay one equation.
- ``tinygsm_wrong`` / ``llm_code_wrong``: that share of the format's programs carries one
  wrong operation (one operator of one step swapped, e.g. ``-`` for ``+``), as TinyGSM's
  solutions were never checked against an answer. The document stays self-consistent: an
  ``llm_code`` solution shows the wrong program's true output and boxes it. With
  ``wrong_by: document`` each program is wrong with that probability, by a random swap:
  noise a model learns to reproduce only when it samples (its greedy choice stays the
  majority's, correct operation). With ``wrong_by: template`` the share is of problem types
  (templates, drawn once per format and seed), and every program of those types is wrong
  the same way (the first swap, in step order, that changes the answer): a systematic
  error that greedy decoding reproduces too.

The decisions of both knobs draw from their own random streams, so turning one on leaves
the other formats' documents (and the problem stream) as they are.
"""

from __future__ import annotations

import ast
import dataclasses
import random
from collections.abc import Iterator
from fractions import Fraction
from typing import TYPE_CHECKING

from echo_nemo.data import echolab, echolab_templates  # noqa: F401  (importing it registers the TEMPLATES)
from echo_nemo.data.echolab import EchoProblem, python_repr, render_llm_code, render_tinygsm

if TYPE_CHECKING:
    from echo_nemo.data.config import EchoLabConfig

TEXT_STYLES = ("inline", "steps")
TEXT_OPENING = "Let's work it out step by step."
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_SWAPS = {"+": ("-", "*"), "-": ("+",), "*": ("+",), "/": ("*",)}


def active(cfg: EchoLabConfig) -> bool:
    """True when any fair knob differs from its default (today's corpus otherwise)."""
    return cfg.text_style != "inline" or cfg.tinygsm_wrong > 0 or cfg.llm_code_wrong > 0


# ----------------------------------------------------------------------------- worked arithmetic
def _places(n: int) -> list[int]:
    """Non-zero place parts of n >= 0, largest first: 204 -> [200, 4]; 0 -> [0]."""
    parts = [int(d) * 10 ** i for i, d in enumerate(reversed(str(n))) if d != "0"]
    return list(reversed(parts)) or [0]


def worked_op(a: int, op: str, b: int) -> list[str]:
    """The chain a op b = ... = r as its members (strings); [a op b, r] for a one-step fact."""
    head = f"{a} {op} {b}"
    if op == "*":
        x, y = (a, b) if len(_places(b)) >= len(_places(a)) else (b, a)  # split y, the busier one
        parts = _places(y)
        if len(parts) < 2:
            return [head, str(a * b)]
        terms = [x * p for p in parts]
        return [head, " + ".join(f"{x} * {p}" for p in parts), " + ".join(map(str, terms)), str(a * b)]
    if op in "+-":
        parts = _places(b)
        if len(parts) < 2:
            return [head, str(a + b if op == "+" else a - b)]
        chain, acc = [head], a
        while len(parts) > 1:  # take the second operand's place parts one at a time
            chain.append(f"{acc} {op} " + f" {op} ".join(map(str, parts)))
            acc = acc + parts[0] if op == "+" else acc - parts[0]
            parts = parts[1:]
        chain.append(f"{acc} {op} {parts[0]}")
        return chain + [str(acc + parts[0] if op == "+" else acc - parts[0])]
    q = a // b  # exact division (checked by the caller)
    if q < 10 or q % 10 == 0:
        return [head, str(q)]
    hi, lo = b * (q - q % 10), b * (q % 10)
    return [head, f"({hi} + {lo}) / {b}", f"{q - q % 10} + {q % 10}", str(q)]


def _value(node: ast.expr) -> Fraction:
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    assert isinstance(node, ast.BinOp)
    a, b = _value(node.left), _value(node.right)
    op = _OPS[type(node.op)]
    return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b


def _reduce_once(node: ast.expr) -> tuple[ast.expr, tuple[int, str, int] | None]:
    """Replace the leftmost innermost operation on two numbers by its value (Python's own
    order of evaluation); returns the new tree and the (a, op, b) it evaluated."""
    if isinstance(node, ast.Constant):
        return node, None
    assert isinstance(node, ast.BinOp)
    if isinstance(node.left, ast.Constant) and isinstance(node.right, ast.Constant):
        a, b = Fraction(node.left.value), Fraction(node.right.value)
        op = _OPS[type(node.op)]
        r = _value(node)
        if a.denominator != 1 or b.denominator != 1 or r.denominator != 1 or r < 0:
            raise ValueError("not whole-number arithmetic")
        return ast.Constant(int(r)), (int(a), op, int(b))
    left, done = _reduce_once(node.left)
    if done is None:
        right, done = _reduce_once(node.right)
        return ast.BinOp(node.left, node.op, right), done
    return ast.BinOp(left, node.op, node.right), done


def worked_expression(math: str) -> list[list[str]]:
    """Each operation of `math` in evaluation order, as a `worked_op` chain."""
    tree = ast.parse(math, mode="eval").body
    chains = []
    while not isinstance(tree, ast.Constant):
        tree, (a, op, b) = _reduce_once(tree)  # type: ignore[misc]
        chains.append(worked_op(a, op, b))
    return chains


def render_text_steps(p: EchoProblem) -> str:
    """The text solution with its arithmetic worked out (see the module docstring)."""
    lines = [TEXT_OPENING]
    for s in p.solution.steps:
        unit = f" {s.unit}" if s.unit else ""
        value = int(s.expr.value)
        try:
            chains = worked_expression(s.expr.math)
        except ValueError:  # a fraction on the way (e.g. 3 / 4 * 8): one equation, as inline text
            chains = [[s.expr.math, str(value)]]
        lines.append(f"{s.text} ${s.expr.math}${unit}.")
        lines += [f"${' = '.join(c)}$" for c in chains]
        lines.append(f"That is ${value}${unit}.")
    lines.append(f"Thus, {p.conclusion.format(ans=chr(92) + 'boxed{' + p.answer_str + '}')}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- wrong programs
def _run_lines(lines: list[str]) -> tuple[Fraction, bool]:
    """The value of the last assignment's name (or last expression) of straight-line
    arithmetic, exactly, and whether Python would hold it as a float (a `/` was involved)."""
    env: dict[str, tuple[Fraction, bool]] = {}

    def ev(node: ast.expr) -> tuple[Fraction, bool]:
        if isinstance(node, ast.Constant):
            return Fraction(node.value), False
        if isinstance(node, ast.Name):
            return env[node.id]
        assert isinstance(node, ast.BinOp)
        (a, fa), (b, fb) = ev(node.left), ev(node.right)
        op = _OPS[type(node.op)]
        if op == "/" and b == 0:
            raise ZeroDivisionError
        v = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b
        return v, fa or fb or op == "/"

    last: tuple[Fraction, bool] = (Fraction(0), False)
    for stmt in ast.parse("\n".join(lines)).body:
        if isinstance(stmt, ast.Assign):
            env[stmt.targets[0].id] = last = ev(stmt.value)  # type: ignore[union-attr]
        elif isinstance(stmt, ast.Expr):
            last = ev(stmt.value)
    return last


def _program_lines(p: EchoProblem) -> list[str]:
    """The program both code formats render (givens, steps), then the answer's name."""
    return ([f"{name} = {value}" for name, value in p.solution.givens]
            + [f"{s.name} = {s.expr.code}" for s in p.solution.steps] + [p.answer.code])


def _swap(p: EchoProblem, i: int, k: int, new: str) -> EchoProblem:
    """`p` with the k-th operation (ast.walk order) of step i's code replaced by `new`."""
    step = p.solution.steps[i]
    tree = ast.parse(step.expr.code, mode="eval")
    node = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp)][k]
    node.op = {v: t for t, v in _OPS.items()}[new]()
    steps = list(p.solution.steps)
    steps[i] = dataclasses.replace(step, expr=dataclasses.replace(step.expr, code=ast.unparse(tree)))
    return dataclasses.replace(p, solution=dataclasses.replace(p.solution, givens=list(p.solution.givens),
                                                               steps=steps))


def wrong_program(p: EchoProblem, rng: random.Random | None) -> EchoProblem | None:
    """A copy of `p` whose program has one operator of one step swapped (a random one of
    those that give a different answer Python prints plainly; without `rng` the first in
    step order), its answer the wrong program's value; None if no swap gives one (the
    caller keeps `p`)."""
    truth = _run_lines(_program_lines(p))[0]
    options = []
    for i, s in enumerate(p.solution.steps):
        ops = [n for n in ast.walk(ast.parse(s.expr.code, mode="eval")) if isinstance(n, ast.BinOp)]
        options += [(i, k, new) for k, n in enumerate(ops) for new in _SWAPS[_OPS[type(n.op)]]]
    if rng is not None:
        rng.shuffle(options)
    for i, k, new in options:
        q = _swap(p, i, k, new)
        try:
            value, is_float = _run_lines(_program_lines(q))
        except ZeroDivisionError:
            continue
        shown = python_repr(value, is_float) if value.denominator == 1 else repr(float(value))
        if value != truth and len(shown) <= 12 and Fraction(shown) == value:
            return dataclasses.replace(q, answer=dataclasses.replace(p.answer, value=value, is_float=is_float))
    return None


def render_wrong_llm_code(q: EchoProblem) -> str:
    """`render_llm_code` of a wrong program: its true output, and that output boxed."""
    text = render_llm_code(q)
    if q.answer.value.denominator == 1:
        return text
    shown = repr(float(q.answer.value))  # render_llm_code boxes the integer part: box the output
    return text.replace(f"\\boxed{{{q.answer_str}}}", f"\\boxed{{{shown}}}")


# ----------------------------------------------------------------------------- documents
def wrong_templates(cfg: EchoLabConfig, fmt: str, rate: float) -> set[str]:
    """`wrong_by: template`: round(rate x number of templates) problem types, drawn once for
    the format and seed, whose programs are all wrong."""
    names = sorted(echolab.TEMPLATES)
    return set(random.Random(f"echolab-wrong-templates/{cfg.seed}/{fmt}").sample(names, round(rate * len(names))))


def documents(fmt: str, cfg: EchoLabConfig) -> Iterator[str]:
    """The documents of one echo-lab format source under the fair knobs: the default
    corpus's problem stream and tinygsm misquotes, text rendered by `cfg.text_style`, and
    `cfg.<fmt>_wrong` of the code programs (or of the problem types, `cfg.wrong_by`) with
    one wrong operation."""
    noise = random.Random(f"echolab-misquote/{cfg.seed}")  # the default corpus's misquote stream
    wrong = random.Random(f"echolab-wrong/{cfg.seed}/{fmt}")
    rate = {"tinygsm": cfg.tinygsm_wrong, "llm_code": cfg.llm_code_wrong}.get(fmt, 0.0)
    by_template = wrong_templates(cfg, fmt, rate) if cfg.wrong_by == "template" and rate > 0 else None
    for p in echolab.generate(cfg.num_problems, seed=cfg.seed, split="train", min_steps=cfg.min_steps,
                              max_steps=cfg.max_steps, max_number=cfg.max_number,
                              step_weights=cfg.step_weights):
        misquote = fmt == "tinygsm" and noise.random() < cfg.tinygsm_misquote
        if by_template is not None:
            q = wrong_program(p, None) if p.template in by_template else None
        else:
            q = wrong_program(p, wrong) if rate > 0 and wrong.random() < rate else None
        if fmt == "text":
            body = render_text_steps(p) if cfg.text_style == "steps" else p.render("text")
        elif fmt == "tinygsm":
            body = render_tinygsm(q or p, noise if misquote else None)
        else:
            body = render_wrong_llm_code(q) if q is not None else render_llm_code(p)
        yield f"{p.question}\n\n{body}"
