"""The contract between the RL step (rl/loop.py) and an algorithm.

The loop runs the same phases for every algorithm:

    sample -> score -> experience (old/ref log-probs, KL penalty) -> advantages -> update

An algorithm is a subclass of `Algorithm` that supplies what makes it that algorithm:
`advantages` always; `update` when it is not the shared clipped policy-gradient update
(PPO adds its critic's update, Expert Iteration fine-tunes on what verified); `setup`
for auxiliary models (PPO's critic, registered in `run.state.aux` so it is checkpointed
and resumed with the policy); `sample` / `experience` when a step is not "k samples for
each of this step's prompts" (Expert Iteration's rounds). Constants are config keys.

Adding one (e.g. RLOO, Dr. GRPO, DAPO): a module with a subclass and an entry in
`rl/run.py`'s ALGORITHMS.
"""

from __future__ import annotations

import torch

from echo_nemo.rl.experience import Experience
from echo_nemo.rl.policy import make_experience, policy_update
from echo_nemo.rl.rollout import Batch
from echo_nemo.rl.state import RLRun


class Algorithm:
    """Base class: the shared defaults of every phase an algorithm may override."""

    kl_in_reward: bool = False  # where the KL term goes when `kl.in_reward` is null

    def clip(self, run: RLRun) -> float:
        """The policy ratio's clip epsilon (a config key of the algorithm)."""
        raise NotImplementedError

    def setup(self, run: RLRun) -> None:
        """Build the policy's optimizer (and any auxiliary model) before the run resumes."""
        run.state.opt, run.state.sched = run.cfg.optim.build(run.model, run.total)

    def sample(self, run: RLRun, step: int) -> Batch:
        """rollout.samples_per_prompt samples for each of this step's prompts."""
        return run.sampler.sample(step)

    def experience(self, run: RLRun, batch: Batch, rewards: list[float]) -> Experience:
        """Training tensors with old (and reference) log-probs."""
        return make_experience(run, batch.rollout, rewards)

    def advantages(self, run: RLRun, exp: Experience) -> None:
        """Set exp.advantages ([n, L-1]); may add metrics to exp.stats."""
        raise NotImplementedError

    def update(self, run: RLRun, exp: Experience, step: int) -> tuple[dict[str, float], torch.Tensor | None]:
        """Train on the experience: (metrics, per-token entropy or None)."""
        return policy_update(run, exp, self.clip(run))
