"""The rollout phase: which prompts a step trains on, and sampling completions for them.

Every step's prompts come from a seeded shuffle per epoch, and every generation call has
its own seed (run seed, step, DP rank), so a step samples the same completions whatever
ran before it: a resumed run and a run with extra held-out evals sample alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from echo_nemo import distributed as D
from echo_nemo.config import SamplingConfig
from echo_nemo.model.generate import Rollout, generate
from echo_nemo.rl.config import RLConfig


@dataclass
class Batch:
    """One step's samples: `samples` contiguous completions for each problem, in order."""

    problems: list
    rollout: Rollout
    samples: int

    def truths(self) -> list[str]:
        return [p.answer for p in self.problems for _ in range(self.samples)]


def generation_seed(run_seed: int, step: int, dp_rank: int) -> int:
    """seed * 100003 + step * 1009 + DP rank: distinct per step and rank, fixed per run."""
    return run_seed * 100_003 + step * 1_009 + dp_rank


class Sampler:
    """The training prompts and the policy's sampled completions for them."""

    def __init__(self, cfg: RLConfig, problems: list, model, tokenizer) -> None:
        self.cfg = cfg
        self.problems = problems
        self.model = model
        self.tokenizer = tokenizer

    def prompts_for_step(self, step: int) -> list:
        """This DP rank's prompts for `step`: a seeded shuffle per epoch, deterministic for resume."""
        per = self.cfg.rollout.prompts_per_step
        n = len(self.problems)
        out = []
        for k in range((step - 1) * per, step * per):
            epoch, i = divmod(k, n)
            order = np.random.default_rng(self.cfg.seed + epoch).permutation(n)
            out.append(self.problems[int(order[i])])
        return out[D.dp_rank() :: D.dp_size()]

    def generate(self, problems: list, step: int, samples: int, sampling: SamplingConfig | None = None) -> Rollout:
        """`samples` completions per problem, contiguous per problem (a GRPO group), sampled
        with `sampling` (default: the rollout's settings)."""
        r = self.cfg.rollout
        prompts = [p.prompt for p in problems for _ in range(samples)]
        return generate(
            self.model, self.tokenizer, prompts, max_new_tokens=r.max_new_tokens,
            **(sampling or r).generate_kwargs(), seed=generation_seed(self.cfg.seed, step, D.dp_rank()),
            batch_size=r.batch_size, max_prompt_tokens=r.max_prompt_tokens,
        )

    def sample(self, step: int) -> Batch:
        """rollout.samples_per_prompt samples for each of this step's prompts."""
        problems = self.prompts_for_step(step)
        k = self.cfg.rollout.samples_per_prompt
        return Batch(problems, self.generate(problems, step, samples=k), k)
