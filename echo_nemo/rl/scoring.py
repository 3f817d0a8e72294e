"""The scoring phase: rewards and formats for completions, from one of three scorers.

In process (`reward.in_process`), over HTTP (a configured `reward.url`, or a local server
that `reward_endpoint` starts and stops around the run), or a python `reward_fn`. Only
TP rank 0 scores; the other TP ranks receive its answer, so every rank of a TP group
trains on the same rewards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from echo_nemo import distributed as D
from echo_nemo import parallel as P
from echo_nemo.reward.client import RewardClient, local_reward_server
from echo_nemo.reward.score import score
from echo_nemo.rl.config import RLConfig


class Scorer:
    """Scores completions against ground truths; call it on every rank of a TP group.

    A custom `reward_fn(completions, ground_truths)` may return floats or Score-like
    objects (with .reward and .format); floats are recorded with format 'other'.
    """

    def __init__(self, cfg: RLConfig, url: str | None, reward_fn: Callable | None = None):
        self.fn = reward_fn
        self.client = None
        self.active = D.tp_rank() == 0  # the rank that asks; the others receive
        if self.active and reward_fn is None and not cfg.reward.in_process:
            self.client = RewardClient(url, timeout=cfg.reward.timeout_s)

    def __call__(self, completions: list[str], truths: list[str]) -> tuple[list[float], list[str]]:
        """(rewards, formats), the same on every rank of the TP group."""
        return P.broadcast_tp(self._score(completions, truths) if self.active else None)

    def _score(self, completions: list[str], truths: list[str]) -> tuple[list[float], list[str]]:
        if self.fn is not None:
            scores = self.fn(completions, truths)
        elif self.client is not None:
            scores = self.client.score(completions, truths)
        else:
            scores = score(completions, truths)
        rewards = [float(getattr(s, "reward", s)) for s in scores]
        formats = [getattr(s, "format", "other") or "other" for s in scores]
        return rewards, formats


@contextlib.contextmanager
def reward_endpoint(cfg: RLConfig, reward_fn: Callable | None) -> Iterator[str | None]:
    """The reward server URL: the configured one, or a local server started (and stopped) here."""
    if reward_fn is not None or cfg.reward.in_process or cfg.reward.url:
        yield cfg.reward.url
        return
    with local_reward_server(workers=cfg.reward.workers) as url:
        yield url
