"""The contract between the RL step (rl/loop.py) and an algorithm.

The loop runs the same phases for every algorithm:

    sample -> score -> experience (old/ref log-probs, KL penalty) -> advantages -> update

An algorithm is a subclass of `Algorithm` that supplies what makes it that algorithm:
`advantages` always; `update` when it is not the shared clipped policy-gradient update
(PPO adds its critic's update, Expert Iteration fine-tunes on what verified); `setup`
for auxiliary models (PPO's critic, registered in `run.aux` so it is checkpointed and
resumed with the policy); `sample` / `experience` when a step is not "k samples for
each of this step's prompts" (Expert Iteration's rounds). Constants are config keys.

Adding one (e.g. RLOO, Dr. GRPO, DAPO): a module with a subclass and an entry in
`rl/run.py`'s ALGORITHMS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from echo_nemo.model.build import ModelConfig, build_gpt
from echo_nemo.model.generate import Rollout
from echo_nemo.rl.experience import Experience
from echo_nemo.rl.loop import policy_update

if TYPE_CHECKING:  # the run imports the algorithms
    from echo_nemo.rl.run import RLRun


@dataclass
class Batch:
    """One step's samples: `samples` contiguous completions for each problem, in order."""

    problems: list
    rollout: Rollout
    samples: int

    def truths(self) -> list[str]:
        return [p.answer for p in self.problems for _ in range(self.samples)]


@dataclass
class AuxModel:
    """A model trained beside the policy (PPO's critic): checkpointed under run_dir/<name>/."""

    module: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any


def clone_model(model, model_config: ModelConfig):
    """A second GPTModel with the same weights (deepcopy cannot copy megatron's process groups)."""
    dtype = next(model.parameters()).dtype
    with torch.random.fork_rng(devices=[]):  # building draws init weights: keep the run's RNG
        twin = build_gpt(model_config, model_config.vocab_size, params_dtype=dtype)
    twin.load_state_dict(model.state_dict())
    return twin


class Algorithm:
    """Base class: the shared defaults of every phase an algorithm may override."""

    kl_in_reward: bool = False  # where the KL term goes when `kl.in_reward` is null

    def clip(self, run: RLRun) -> float:
        """The policy ratio's clip epsilon (a config key of the algorithm)."""
        raise NotImplementedError

    def setup(self, run: RLRun) -> None:
        """Build the policy's optimizer (and any auxiliary model) before the run resumes."""
        run.opt, run.sched = run.cfg.optim.build(run.model, run.total)

    def sample(self, run: RLRun, step: int) -> Batch:
        """rollout.samples_per_prompt samples for each of this step's prompts."""
        problems = run.prompts_for_step(step)
        k = run.cfg.rollout.samples_per_prompt
        return Batch(problems, run.generate(problems, step, samples=k), k)

    def experience(self, run: RLRun, batch: Batch, rewards: list[float]) -> Experience:
        """Training tensors with old (and reference) log-probs."""
        return run.make_experience(batch.rollout, rewards)

    def advantages(self, run: RLRun, exp: Experience) -> None:
        """Set exp.advantages ([n, L-1]); may add metrics to exp.stats."""
        raise NotImplementedError

    def update(self, run: RLRun, exp: Experience, step: int) -> tuple[dict[str, float], torch.Tensor | None]:
        """Train on the experience: (metrics, per-token entropy or None)."""
        return policy_update(run, exp, self.clip(run))
