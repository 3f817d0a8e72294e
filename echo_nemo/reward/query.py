"""Find the response in what RL trainers send: special-token text removed, prompt cut off.

OpenRLHF's client posts ``query = tokenizer.decode(prompt_ids + response_ids,
skip_special_tokens=False)`` with the prompt as its dataset text, so the query carries the
tokenizer's special tokens (``</s>`` after the answer, ``<s>`` or pad text before the
prompt) and, when the prompt was truncated to fit, only the prompt's end. The rules here
(pure functions):

1. ``strip_special_tokens``: every special-token string (the configured tokenizer's
   bos/eos/pad/unk and ``COMMON_SPECIAL_TOKENS``) is removed from query and prompt, longest
   first, before anything else looks at them.
2. ``locate_response(query, prompt)`` -> (response, how), the first that applies:
   ``no_prompt`` (empty prompt: the whole query), ``prefix`` (the query starts with the
   prompt), ``prompt_inside`` (the prompt occurs in the query after other text: the
   response follows its first occurrence), ``whitespace`` (the same two, comparing only
   non-whitespace characters, as a decode may re-space the text), ``prompt_end`` (the
   prompt's last ``TAIL_CHARS`` non-whitespace characters occur in the query, as after
   left truncation: the response follows their first occurrence), else ``not_found`` with response None.
   The prompt's own text is never returned as part of a response.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from echo_nemo.errors import UserError, require_dir

COMMON_SPECIAL_TOKENS: tuple[str, ...] = (
    "<s>", "</s>", "<pad>", "<unk>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>",
    "<|begin_of_text|>", "<|end_of_text|>",
)  # fmt: skip
HOW: tuple[str, ...] = ("no_prompt", "prefix", "prompt_inside", "whitespace", "prompt_end",
                        "not_found")  # fmt: skip
TAIL_CHARS = 32


@functools.lru_cache(maxsize=8)
def special_token_strings(tokenizer_path: str) -> tuple[str, ...]:
    """The bos/eos/pad/unk strings of a Hugging Face tokenizer folder (UserError if unreadable).

    Cached per folder: the adapters call it for every sample.
    """
    require_dir(tokenizer_path, "tokenizer folder")
    try:
        from transformers import AutoTokenizer  # seconds to import; only with --tokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_path)
    except Exception as e:
        raise UserError(
            f"tokenizer {tokenizer_path!r}: not a Hugging Face tokenizer folder ({e})"
        ) from e
    found = (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token)
    return tuple(t for t in found if isinstance(t, str) and t)


def strip_special_tokens(text: str, tokens: Iterable[str] = COMMON_SPECIAL_TOKENS) -> str:
    """``text`` with every occurrence of each token string removed (longest tokens first)."""
    for token in sorted({t for t in tokens if t}, key=len, reverse=True):
        text = text.replace(token, "")
    return text


def _squeeze(text: str) -> tuple[str, list[int]]:
    """The non-whitespace characters of `text` and, for each, its index in `text`."""
    index = [i for i, ch in enumerate(text) if not ch.isspace()]
    return "".join(text[i] for i in index), index


def locate_response(query: str, prompt: str) -> tuple[str | None, str]:
    """(the response part of ``query``, how it was found); see the module docstring.

    Both arguments must already have their special tokens removed.
    """
    if not prompt.strip():
        return query, "no_prompt"
    if query.startswith(prompt):
        return query[len(prompt) :], "prefix"
    at = query.find(prompt)
    if at >= 0:
        return query[at + len(prompt) :], "prompt_inside"
    q, q_index = _squeeze(query)
    p, _ = _squeeze(prompt)
    at = q.find(p)
    if at >= 0:
        return query[q_index[at + len(p) - 1] + 1 :], "whitespace"
    tail = p[-TAIL_CHARS:]
    at = q.find(tail)
    if at >= 0:  # a truncated or altered prompt: what precedes its end is never graded
        return query[q_index[at + len(tail) - 1] + 1 :], "prompt_end"
    return None, "not_found"


def split_queries(
    queries: list[str], prompts: list[str], tokens: Iterable[str] = COMMON_SPECIAL_TOKENS
) -> tuple[list[str | None], list[str]]:
    """`locate_response` for each (query, prompt) after `strip_special_tokens` on both."""
    tokens = tuple(tokens)
    responses, hows = [], []
    for query, prompt in zip(queries, prompts):
        response, how = locate_response(
            strip_special_tokens(query, tokens), strip_special_tokens(prompt, tokens)
        )
        responses.append(response)
        hows.append(how)
    return responses, hows
