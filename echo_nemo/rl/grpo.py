"""GRPO (Shao et al. 2024): group-normalised advantages, clipped ratio, KL as a loss term.

    per step:  generate k samples for each of P prompts -> score -> A_i = (r_i - mean_g) / std_g
               -> clipped policy-gradient update (+ kl.coef * k3 KL to the frozen reference)

No critic. KL goes into the loss (GRPO's choice, estimator k3 by default); with
`kl.in_reward` the k1 KL summed over a sample's tokens is subtracted from its reward
before normalisation instead. kl.coef = 0 loads no reference model.
"""

from __future__ import annotations

from echo_nemo.rl.advantages import group_normalized, sequence_to_tokens
from echo_nemo.rl.common import Experience, RLRun, policy_update


def advantages(run: RLRun, exp: Experience) -> None:
    """Group-normalised, sequence-level advantages broadcast to the completion tokens."""
    cfg = run.cfg
    rewards = exp.rewards
    if cfg.kl_in_reward() and exp.ref_logprobs is not None:
        rewards = rewards - cfg.kl.coef * ((exp.old_logprobs - exp.ref_logprobs) * exp.mask).sum(-1)
    adv = group_normalized(rewards, cfg.rollout.samples_per_prompt, scale=cfg.grpo.scale_by_std)
    exp.advantages = sequence_to_tokens(adv, exp.mask)


def train(run: RLRun) -> None:
    cfg = run.cfg
    run.opt, run.sched = run.optimizer(run.model.parameters(), cfg.optim.lr)
    run.resume()
    for step in run.steps():
        problems = run.prompts_for_step(step)
        with run.timer("generate"):
            rollout = run.generate(problems, step)
        with run.timer("score"):
            rewards, formats = run.score(rollout, problems)
        with run.timer("logprobs"):
            exp = run.make_experience(rollout, rewards)
        with run.timer("advantages"):
            advantages(run, exp)
        with run.timer("update"):
            stats, entropy = policy_update(run, exp, cfg.grpo.clip, kl_in_loss=not cfg.kl_in_reward())
        metrics = run.step_metrics(rollout, rewards, formats, exp, entropy)
        metrics.update(stats)
        run.finish_step(step, metrics)
