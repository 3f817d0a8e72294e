"""Solution formats: classify a completion by parsing it, and find what to execute.

The three formats the study tracks (PAPER.md) and the rules used here:

- ``llm_code`` (OpenMathInstruct-1): at least one complete ``<llm-code>...</llm-code>``
  block. Its answer is the value of the last block's last expression when the blocks
  run in order in one namespace; when that gives nothing, the last ``\\boxed{}``.
- ``tinygsm`` (TinyGSM): Python source that ``ast.parse`` accepts (inside a markdown
  fence, the whole completion, or the ``def`` block cut out of surrounding prose) with
  a top-level function definition. Its answer is what calling the entry function
  returns: ``simple_math_problem`` when defined, else the only top-level function
  without required arguments.
- ``text`` (OpenMathInstruct-2): prose with a ``\\boxed{}``; the answer is the last one.
- ``other``: none of the above.

The checks parse structure (tags, Python syntax trees, balanced braces); a word such
as "define" or "default" in prose never makes a completion code. Nothing here runs
the code: execution happens only in the sandbox (sandbox.py).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

FORMATS: tuple[str, ...] = ("tinygsm", "llm_code", "text", "other")
ENTRY_FUNCTION = "simple_math_problem"

_LLM_CODE = re.compile(r"<llm-code>(.*?)</llm-code>", re.DOTALL)
# ```python ... ``` or ``` ... ```; the closing fence must start a line.
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_CODE_LANGS = {"", "python", "py", "python3"}


@dataclass(frozen=True)
class Parsed:
    """What a completion is and what would have to run to get its answer."""

    format: str
    program: str | None = None  # tinygsm: the module source to execute
    entry: str | None = None  # tinygsm: the function to call
    blocks: list[str] = field(default_factory=list)  # llm_code: code blocks, in order
    boxed: str | None = None  # last \boxed{} content, if any


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces."""
    found = None
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    found = text[start:i].strip()
                    break
    return found


def llm_code_blocks(text: str) -> list[str]:
    """The contents of the complete ``<llm-code>`` blocks, in order."""
    return [block.strip("\n") for block in _LLM_CODE.findall(text)]


def fenced_blocks(text: str) -> list[str]:
    """Markdown code fences whose language is Python or unnamed."""
    return [body for lang, body in _FENCE.findall(text) if lang.lower() in _CODE_LANGS]


def _parse_module(source: str) -> ast.Module | None:
    if "def" not in source:  # cheap reject before a full parse; never decides "yes"
        return None
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _def_chunk(text: str) -> str | None:
    """The lines from the first top-level ``def`` to the end of its indented body.

    Small models often surround a correct function with prose or start another
    question after it; cutting the ``def`` block out keeps those completions code.
    """
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("def ")), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][:1] in (" ", "\t")):
        end += 1
    return "\n".join(lines[start:end])


def entry_function(tree: ast.Module) -> str | None:
    """``simple_math_problem`` if defined at top level, else the only top-level function
    that can be called with no arguments."""
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    if any(f.name == ENTRY_FUNCTION for f in functions):
        return ENTRY_FUNCTION
    callable_without_args = [
        f.name
        for f in functions
        if len(f.args.posonlyargs) + len(f.args.args) == len(f.args.defaults)
        and all(d is not None for d in f.args.kw_defaults)
    ]
    return callable_without_args[0] if len(callable_without_args) == 1 else None


def _python_program(text: str) -> tuple[str, ast.Module] | None:
    """The first candidate source that parses and defines a top-level function."""
    candidates = [*fenced_blocks(text), text]
    chunk = _def_chunk(text)
    if chunk is not None:
        candidates.append(chunk)
    for source in candidates:
        tree = _parse_module(source)
        if tree is not None and any(isinstance(n, ast.FunctionDef) for n in tree.body):
            return source, tree
    return None


def parse_completion(text: str) -> Parsed:
    """Classify ``text`` and collect what its answer extraction needs (runs nothing)."""
    boxed = last_boxed(text)
    blocks = llm_code_blocks(text)
    if blocks:
        return Parsed("llm_code", blocks=blocks, boxed=boxed)
    program = _python_program(text)
    if program is not None:
        source, tree = program
        return Parsed("tinygsm", program=source, entry=entry_function(tree), boxed=boxed)
    if boxed is not None:
        return Parsed("text", boxed=boxed)
    return Parsed("other")


def classify(text: str) -> str:
    """One of ``tinygsm``, ``llm_code``, ``text``, ``other`` (see the module docstring)."""
    return parse_completion(text).format
