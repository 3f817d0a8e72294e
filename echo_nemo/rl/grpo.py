"""GRPO (Shao et al. 2024): group-normalised advantages, clipped ratio, KL as a loss term.

    per step:  generate k samples for each of P prompts -> score -> A_i = (r_i - mean_g) / std_g
               -> clipped policy-gradient update (+ kl.coef * k3 KL to the frozen reference)

No critic. KL goes into the loss (GRPO's choice, estimator k3 by default); with
`kl.in_reward` the k1 KL summed over a sample's tokens is subtracted from its reward
before normalisation instead. kl.coef = 0 loads no reference model.
"""

from __future__ import annotations

from echo_nemo.rl.advantages import group_normalized, sequence_to_tokens
from echo_nemo.rl.algorithm import Algorithm
from echo_nemo.rl.experience import Experience
from echo_nemo.rl.state import RLRun


class GRPO(Algorithm):
    kl_in_reward = False

    def clip(self, run: RLRun) -> float:
        return run.cfg.grpo.clip

    def advantages(self, run: RLRun, exp: Experience) -> None:
        """Group-normalised, sequence-level advantages broadcast to the completion tokens."""
        cfg = run.cfg
        adv = group_normalized(exp.sequence_rewards(), cfg.rollout.samples_per_prompt, scale=cfg.grpo.scale_by_std)
        exp.advantages = sequence_to_tokens(adv, exp.mask)
