"""The building blocks of an echo-lab problem: exact quantities, the solution program and
the template registry.

A template (echolab_templates.py) draws numbers from a `Ctx`, states them with
`Solution.given` and computes with `Solution.step`; every value is a `fractions.Fraction`
and a step that is not a non-negative integer raises `Reject`, so the generator
(echolab.py) samples again. `template(name, steps)` registers a problem type in
`TEMPLATES`, in the order its module defines them (the generator's choices follow it).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction


class Reject(Exception):
    """The sampled numbers do not give exact non-negative integers: sample again."""


# ----------------------------------------------------------------------------- quantities
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True)
class Q:
    """A quantity: exact value, its code (variable names) and math (numbers) spelling."""

    value: Fraction
    code: str
    math: str
    prec: int = 3  # 3 = atom, 2 = product, 1 = sum
    is_float: bool = False  # Python would hold it as a float (a `/` was involved)

    def _op(self, other: Q | int, op: str, swap: bool = False) -> Q:
        o = other if isinstance(other, Q) else Q(Fraction(other), str(other), str(other))
        a, b = (o, self) if swap else (self, o)
        if op == "+":
            v = a.value + b.value
        elif op == "-":
            v = a.value - b.value
        elif op == "*":
            v = a.value * b.value
        else:
            if b.value == 0:
                raise Reject("division by zero")
            v = a.value / b.value
        p = _PREC[op]
        # Left operand needs brackets if it binds looser; the right one also when equal
        # and the operator is not associative (a - (b - c), a / (b * c)).
        lpar = a.prec < p
        rpar = b.prec < p or (b.prec == p and op in "-/")
        code = f"{_par(a.code, lpar)} {op} {_par(b.code, rpar)}"
        math = f"{_par(a.math, lpar)} {op} {_par(b.math, rpar)}"
        return Q(v, code, math, p, a.is_float or b.is_float or op == "/")

    def __add__(self, o: Q | int) -> Q:
        return self._op(o, "+")

    def __radd__(self, o: int) -> Q:
        return self._op(o, "+", swap=True)

    def __sub__(self, o: Q | int) -> Q:
        return self._op(o, "-")

    def __rsub__(self, o: int) -> Q:
        return self._op(o, "-", swap=True)

    def __mul__(self, o: Q | int) -> Q:
        return self._op(o, "*")

    def __rmul__(self, o: int) -> Q:
        return self._op(o, "*", swap=True)

    def __truediv__(self, o: Q | int) -> Q:
        return self._op(o, "/")

    def __rtruediv__(self, o: int) -> Q:
        return self._op(o, "/", swap=True)

    def __int__(self) -> int:
        return int(self.value)


def _par(s: str, yes: bool) -> str:
    return f"({s})" if yes else s


def python_repr(value: Fraction, is_float: bool) -> str:
    """What Python prints for the value: ``12.0`` if it is a float, else ``12``."""
    return repr(float(value)) if is_float else str(int(value))


@dataclass
class Step:
    name: str
    expr: Q
    text: str  # "The apples cost" -> "The apples cost $3 * 4 = 12$ dollars."
    unit: str


@dataclass
class Solution:
    """The program of one problem: givens then steps, each an exact integer."""

    givens: list[tuple[str, int]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    def given(self, name: str, value: int) -> Q:
        if value < 0:
            raise Reject(f"negative given {name}")
        self.givens.append((name, value))
        return Q(Fraction(value), name, str(value))

    def step(self, name: str, expr: Q, text: str, unit: str = "") -> Q:
        v = expr.value
        if v.denominator != 1 or v < 0:
            raise Reject(f"step {name} = {v} is not a non-negative integer")
        self.steps.append(Step(name, expr, text, unit))
        return Q(v, name, str(int(v)), 3, expr.is_float)


# ----------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class Ctx:
    """What a template may draw from: the rng, the number range and the target steps."""

    rng: random.Random
    max_number: int
    steps: int

    def num(self, lo: int = 2, hi: int | None = None) -> int:
        """A number in [lo, min(hi, max_number)] (at least lo)."""
        top = self.max_number if hi is None else min(hi, self.max_number)
        return self.rng.randint(lo, max(lo, top))

    def pick(self, seq):  # noqa: ANN001, ANN201 - any sequence
        return self.rng.choice(seq)

    def sample(self, seq, k: int):  # noqa: ANN001, ANN201
        return self.rng.sample(list(seq), k)


TemplateFn = Callable[[Ctx], tuple[str, Solution, Q, str]]


@dataclass(frozen=True)
class Template:
    name: str
    steps: tuple[int, int]  # the range of step counts it can produce
    fn: TemplateFn


TEMPLATES: dict[str, Template] = {}


def template(name: str, steps: tuple[int, int] | int) -> Callable[[TemplateFn], TemplateFn]:
    """Register a problem type that produces `steps` (or a range of) reasoning steps."""
    rng = (steps, steps) if isinstance(steps, int) else steps

    def deco(fn: TemplateFn) -> TemplateFn:
        TEMPLATES[name] = Template(name, rng, fn)
        return fn

    return deco
