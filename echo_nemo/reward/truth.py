"""Ground truths in the forms datasets store them: read the answer once, the same everywhere.

``read_ground_truth(value) -> str`` is the one normaliser; ``score()`` calls it for every
item, so ``/score``, ``/get_reward``, the slime endpoint, the framework adapters and
``echo-nemo reward score`` all read ground truths alike. Rules, first match wins:

1. A JSON number (int or float, not bool, finite) is its decimal text; a float that is a
   whole number loses its ``.0`` (``72.0`` -> ``"72"``).
2. Text with ``####`` (GSM8K's ``answer`` field, the worked solution ending ``#### 72``,
   or ``#### 72`` alone): the rest of the line after the last ``####``, with ``$``,
   thousands separators (``1,234`` -> ``1234``) and a trailing period removed.
3. Text with ``\\boxed{...}`` or ``\\fbox{...}`` (a MATH solution): the last one's content,
   braces balanced (formats.last_boxed, the project's only one).
4. Text with ``The answer is`` (MetaMathQA's last line, ``The answer is: 72``): the rest
   of the line after the last one, a trailing period removed.
5. Otherwise the text itself, when it reads as an answer: one line of at most
   ``MAX_BARE_CHARS`` characters that is not prose (no two words of two or more letters
   in a row outside LaTeX commands and ``\\text{}``); surrounding ``$`` are removed.

Anything else (empty text, a worked solution with no marker, ``None``, a list, ``true``,
NaN) raises ``UnreadableGroundTruth`` naming what was expected: the caller reports it as
that item's error, never as a silent reward of 0. The text returned is then parsed by
math-verify in the sandbox worker; a text math-verify cannot parse is an error there too.
"""

from __future__ import annotations

import math
import re

from echo_nemo.reward.formats import last_boxed

MAX_BARE_CHARS = 200

_ANSWER_IS = re.compile(r"the answer is\s*:?", re.IGNORECASE)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_TEXT_GROUP = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_PROSE = re.compile(r"[A-Za-z]{2,}[ \t]+[A-Za-z]{2,}")


class UnreadableGroundTruth(ValueError):
    """No answer can be read from a ground truth (the message says why)."""


def gsm8k_final_answer(text: str) -> str | None:
    """The answer after GSM8K's last ``####`` ("... #### 1,234" -> "1234"); None without one.

    The rest of that line, with ``$``, thousands separators and a trailing period removed.
    """
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
    return _THOUSANDS.sub("", tail.replace("$", "")).strip().rstrip(".").strip()


def _answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    return text[matches[-1].end() :].strip().split("\n", 1)[0].strip().rstrip(".").strip()


def _strip_dollars(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1].strip()
    return text


def _is_prose(text: str) -> bool:
    bare = _COMMAND.sub(" ", _TEXT_GROUP.sub(" ", text))
    return _PROSE.search(bare) is not None


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_ground_truth(value: object) -> str:
    """The answer a dataset's ground-truth value holds (rules in the module docstring).

    Raises UnreadableGroundTruth when none can be read.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UnreadableGroundTruth(
            f"ground truth {_short(value)} is a {type(value).__name__}; expected a string or a number"
        )
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnreadableGroundTruth(f"ground truth {value!r} is not a finite number")
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, int):
        return str(value)
    text = value.strip()
    if not text:
        raise UnreadableGroundTruth("ground truth is empty")
    for rule, found in (
        ("'####'", gsm8k_final_answer(text)),
        ("\\boxed{}", last_boxed(text) if re.search(r"\\(?:boxed|fbox)\s*\{", text) else None),
        ("'The answer is'", _answer_is(text)),
    ):
        if found is not None:
            answer = _strip_dollars(found)
            if not answer:
                raise UnreadableGroundTruth(
                    f"ground truth {_short(text)} has {rule} with no answer after it"
                )
            return answer
    if re.search(r"\\(?:boxed|fbox)\s*\{", text):
        raise UnreadableGroundTruth(f"ground truth {_short(text)} has an unclosed \\boxed{{")
    bare = _strip_dollars(text)
    if "\n" in bare or len(bare) > MAX_BARE_CHARS or _is_prose(bare):
        raise UnreadableGroundTruth(
            f"no answer in ground truth {_short(text)}: expected a number or expression, "
            "'#### N' (GSM8K), a solution with \\boxed{} (MATH) or 'The answer is: X' (MetaMathQA)"
        )
    return bare
