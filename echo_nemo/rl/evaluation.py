"""The in-loop held-out eval: greedy pass@1 and greedy format shares of the policy.

Runs at step 0 and every `eval_every` steps when that is set, and always at the last step.
Greedy decoding draws no random numbers, and every rollout call seeds its own sampler
(rl/rollout.py), so evaluating more or less often leaves the training run unchanged.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from echo_nemo import distributed as D
from echo_nemo.data.sources import benchmark_name
from echo_nemo.model.generate import generate
from echo_nemo.reward.format_stats import format_metrics
from echo_nemo.rl.config import RLConfig
from echo_nemo.rl.scoring import Scorer

EVAL_BATCH = 64  # held-out prompts per generation call when rollout.batch_size is null
EVAL_HINT_TOKENS = 64 * 1024  # problems x new tokens above which the start of a run says how to bound it


class HeldOutEval:
    """The held-out prompts (the same on every rank) and how to evaluate the policy on them."""

    def __init__(self, cfg: RLConfig, problems: list, scorer: Scorer) -> None:
        self.cfg = cfg
        self.problems = problems
        self.scorer = scorer
        self.benchmark = benchmark_name(cfg.data.eval)

    def due(self, step: int, total: int) -> bool:
        """Step 0 and every `eval_every` steps when it is set; the last step always."""
        every = self.cfg.eval_every
        if step == 0:
            return bool(every)
        return bool(every and step % every == 0) or step == total

    def hint(self) -> str | None:
        """A line for the start of a run whose held-out eval is long (e.g. all 1319 GSM8K
        test problems at 1024 new tokens: minutes even on a GPU, on CPU far longer)."""
        n = len(self.problems)
        new_tokens = self.cfg.eval_max_new_tokens or self.cfg.rollout.max_new_tokens
        if n * new_tokens <= EVAL_HINT_TOKENS:
            return None
        when = f"every {self.cfg.eval_every} steps and " if self.cfg.eval_every else ""
        return (f"[rl] held-out eval: {n} {self.benchmark} problems x up to {new_tokens} "
                f"new tokens, greedy, {when}at the last step; a smoke run can bound it with "
                f"data.eval_limit=N (and eval_max_new_tokens=N)")

    def __call__(self, model, tokenizer) -> dict[str, float]:
        """acc/<benchmark>/pass@1 and eval/format/<name>/{share,acc} of greedy answers."""
        if not self.problems:
            return {}
        completions = self._greedy_answers(model, tokenizer)
        rewards, formats = self.scorer(completions, [p.answer for p in self.problems])
        m = {f"acc/{self.benchmark}/pass@1": float(np.mean(rewards))}
        m.update(format_metrics("eval/", formats, rewards))
        return m

    def _greedy_answers(self, model, tokenizer) -> list[str]:
        """Greedy completions in batches under a progress bar (problems, rate, ETA) on rank 0."""
        r = self.cfg.rollout
        prompts = [p.prompt for p in self.problems]
        bs = r.batch_size or EVAL_BATCH
        completions: list[str] = []
        with tqdm(total=len(prompts), desc=f"rl eval {self.benchmark} greedy", unit="problem",
                  leave=False, disable=not D.is_main()) as bar:
            for start in range(0, len(prompts), bs):
                chunk = prompts[start : start + bs]
                out = generate(model, tokenizer, chunk, greedy=True,
                               max_new_tokens=self.cfg.eval_max_new_tokens or r.max_new_tokens,
                               batch_size=len(chunk), max_prompt_tokens=r.max_prompt_tokens)
                completions += out.completions
                bar.update(len(chunk))
        return completions
