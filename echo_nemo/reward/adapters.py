"""The reward in each RL framework's own calling convention, all through the sandboxed `score()`.

This file is also meant to be loaded by path (OpenRLHF's ``--reward.remote_url reward.py``,
verl's ``reward.custom_reward_function.path``), so it uses absolute imports only. Print its path
with ``python -m echo_nemo.reward.adapters``.

- OpenRLHF: ``reward_func(queries, prompts, labels, **kwargs)`` -> ``{"rewards", "scores",
  "extra_logs"}`` (torch tensors when torch is importable).
- verl: ``compute_score(data_source, solution_str, ground_truth, extra_info=None)`` -> float.
- TRL: ``trl_reward(prompts, completions, **columns)`` -> list[float], the ground truth read
  from a dataset column (``make_trl_reward(column)`` for another column name).
- slime: the server's ``POST /reward`` (server.py); nothing in-process.

Scoring runs in this process's sandbox pool (`score()`), or, when ``ECHO_NEMO_REWARD_URL``
is set, on that reward server. ``ECHO_NEMO_REWARD_TOKENIZER`` names the policy's tokenizer
folder, whose special-token strings are then removed too. Ground truths may be any form truth.py reads or a number.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from echo_nemo import env
from echo_nemo.reward.formats import FORMATS
from echo_nemo.reward.query import (
    COMMON_SPECIAL_TOKENS,
    HOW,
    special_token_strings,
    split_queries,
    strip_special_tokens,
)
from echo_nemo.reward.score import Score, score

URL_ENV = env.REWARD_URL.name
# A Hugging Face tokenizer folder whose bos/eos/pad/unk strings are removed too (the common
# literals such as </s> always are), like `reward serve --tokenizer`.
TOKENIZER_ENV = env.REWARD_TOKENIZER.name
NOT_FOUND = "response not found: the prompt does not occur in the query (after special tokens)"
TRL_COLUMNS = ("answer", "ground_truth", "solution", "label")


def _special_tokens() -> tuple[str, ...]:
    path = env.reward_tokenizer()
    return COMMON_SPECIAL_TOKENS + (special_token_strings(path) if path else ())


def _score(completions: list[str], truths: Sequence[object]) -> list[Score]:
    url = env.reward_url()
    if url:
        from echo_nemo.reward.client import RewardClient

        with RewardClient(url) as client:
            return client.score(completions, list(truths))
    return score(completions, truths)


def score_responses(responses: list[str | None], truths: Sequence[object]) -> list[Score]:
    """Scores of bare responses (no prompt in front): special-token strings removed first;
    a None response (e.g. a tool-call message without text) is graded as empty text."""
    tokens = _special_tokens()
    return _score([strip_special_tokens(r or "", tokens) for r in responses], list(truths))


def score_located(responses: list[str | None], truths: Sequence[object]) -> list[Score]:
    """Scores of located responses; None (no response found) scores 0 with an error."""
    found = [i for i, r in enumerate(responses) if r is not None]
    scores = [Score(0.0, "other", None, NOT_FOUND)] * len(responses)
    got = _score([responses[i] for i in found], [truths[i] for i in found]) if found else []
    for i, s in zip(found, got):
        scores[i] = s
    return scores


def reward_payload(scores: list[Score], hows: list[str]) -> dict:
    """OpenRLHF's reply: rewards, scores, and per-item 0/1 logs (format, response location,
    unreadable ground truth), which OpenRLHF averages into its step logs."""
    rewards = [s.reward for s in scores]
    logs = {f"format_{name}": [float(s.format == name) for s in scores] for name in FORMATS}
    logs |= {f"response_{how}": [float(h == how) for h in hows] for how in HOW}
    logs["truth_unreadable"] = [float(s.truth_error) for s in scores]
    return {"rewards": rewards, "scores": rewards, "extra_logs": logs}


# ----------------------------------------------------------------------------- OpenRLHF
def reward_func(queries: list[str], prompts: list[str], labels: list, **kwargs: object) -> dict:
    """OpenRLHF's reward-file function (``--reward.remote_url path/to/this/file.py`` from
    openrlhf 0.10.2 on, ``--remote_rm_url`` before).

    Its SingleTurnAgentExecutor (openrlhf/utils/agent.py) calls it per sample from a thread
    with ``[decode(prompt + response, skip_special_tokens=False)], [prompt], [label]`` and
    reads ``rewards``, ``scores`` and ``extra_logs`` from the dict returned. Keyword
    arguments a caller adds are accepted and not needed.
    """
    responses, hows = split_queries(list(queries), list(prompts), _special_tokens())
    payload = reward_payload(score_located(responses, list(labels)), hows)
    try:
        import torch
    except ImportError:
        return payload
    return {
        "rewards": torch.tensor(payload["rewards"], dtype=torch.float32),
        "scores": torch.tensor(payload["scores"], dtype=torch.float32),
        "extra_logs": {k: torch.tensor(v) for k, v in payload["extra_logs"].items()},
    }


# ----------------------------------------------------------------------------- verl
def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: object,
    extra_info: dict | None = None,
    **_: object,
) -> float:
    """verl's custom reward function (``reward.custom_reward_function.name=compute_score``).

    verl's naive reward manager (verl/experimental/reward_loop/reward_manager/naive.py in
    verl 0.9) calls it per sample with
    keyword arguments; ``solution_str`` is the decoded response, ``ground_truth`` the
    dataset's ``reward_model.ground_truth``. `data_source` and `extra_info` are not needed.
    """
    (result,) = score_responses([solution_str], [ground_truth])
    return result.reward


# ----------------------------------------------------------------------------- TRL
# What GRPOTrainer passes a reward function besides the dataset's columns (trl 1.16).
TRL_KEYWORDS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


def _message_text(content: object) -> str:
    """A message's `content` as text: None (TRL's assistant turn that only calls a tool) is
    empty, a list of content blocks gives its "text" parts."""
    if content is None:
        return ""
    if isinstance(content, list):  # multimodal content blocks
        return "".join(b.get("text") or "" for b in content if isinstance(b, dict))
    return str(content)


def _completion_text(completion: object) -> str:
    """A TRL completion: a string, or (conversational) a list of {"role", "content"} messages,
    of which the assistant turns' text is joined (tool results are not the model's answer)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        parts = []
        for message in completion:
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                parts.append(_message_text(message.get("content")))
        return "\n".join(p for p in parts if p)
    raise TypeError(f"a TRL completion is a string or a list of messages, got {type(completion).__name__}")


def make_trl_reward(column: str | None = None) -> Callable[..., list[float]]:
    """A TRL reward function reading the ground truth from dataset column `column`
    (default: the first of TRL_COLUMNS present)."""

    def echo_nemo_math_reward(prompts: list, completions: list, **kwargs: object) -> list[float]:
        # GRPOTrainer._calculate_rewards (trl/trainer/grpo_trainer.py) passes every dataset
        # column but "prompt" as a keyword list aligned with `completions`, besides its own
        # keywords (TRL_KEYWORDS).
        names = [column] if column else [c for c in TRL_COLUMNS if c in kwargs]
        if not names or names[0] not in kwargs:
            raise KeyError(
                f"no ground-truth column {column or ' / '.join(TRL_COLUMNS)!r} in the dataset "
                f"(columns passed: {sorted(k for k in kwargs if k not in TRL_KEYWORDS)})"
            )
        truths = list(kwargs[names[0]])  # type: ignore[arg-type]
        tokens = _special_tokens()
        texts = [strip_special_tokens(_completion_text(c), tokens) for c in completions]
        return [s.reward for s in _score(texts, truths)]

    return echo_nemo_math_reward


trl_reward = make_trl_reward()


if __name__ == "__main__":  # print this file's path, for --reward.remote_url / custom_reward_function.path
    print(os.path.abspath(__file__))
