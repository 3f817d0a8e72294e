"""REINFORCE with a baseline.

    per step:  generate k samples per prompt -> score -> A_i = r_i - b_i -> policy gradient
    loss = -mean_t A_i * log pi(y_t)      (one update per batch, so the ratio is 1; the
                                           clipped form is used so extra epochs stay safe)

The baseline b_i is the leave-one-out mean reward of the other samples of the same
prompt (RLOO) when samples_per_prompt > 1, else an exponential moving average of past
batch rewards (kept in the checkpoint). KL: in the loss (k1/k2/k3) or, with
`kl.in_reward`, k1 summed over the sample subtracted from its reward.
"""

from __future__ import annotations

from echo_nemo.rl.advantages import reinforce_baseline, sequence_to_tokens
from echo_nemo.rl.common import Experience, RLRun, policy_update

EMA_DECAY = 0.9


def advantages(run: RLRun, exp: Experience, state: dict) -> None:
    cfg = run.cfg
    rewards = exp.rewards
    if cfg.kl_in_reward() and exp.ref_logprobs is not None:
        rewards = rewards - cfg.kl.coef * ((exp.old_logprobs - exp.ref_logprobs) * exp.mask).sum(-1)
    k = cfg.rollout.samples_per_prompt
    if k > 1:
        adv = reinforce_baseline(rewards, group_size=k)
    else:
        adv = reinforce_baseline(rewards, baseline=state.get("ema"))
        mean = float(rewards.mean())
        state["ema"] = mean if state.get("ema") is None else EMA_DECAY * state["ema"] + (1 - EMA_DECAY) * mean
    exp.advantages = sequence_to_tokens(adv, exp.mask)


def train(run: RLRun) -> None:
    cfg = run.cfg
    run.opt, run.sched = run.optimizer(run.model.parameters(), cfg.optim.lr)
    run.resume()
    state = run.algo_state  # the EMA baseline survives a resume
    for step in run.steps():
        problems = run.prompts_for_step(step)
        with run.timer("generate"):
            rollout = run.generate(problems, step)
        with run.timer("score"):
            rewards, formats = run.score(rollout, problems)
        with run.timer("logprobs"):
            exp = run.make_experience(rollout, rewards)
        with run.timer("advantages"):
            advantages(run, exp, state)
        with run.timer("update"):
            stats, entropy = policy_update(run, exp, clip=0.2, kl_in_loss=not cfg.kl_in_reward())
        metrics = run.step_metrics(rollout, rewards, formats, exp, entropy)
        metrics.update(stats)
        if state.get("ema") is not None:
            metrics["baseline/ema"] = state["ema"]
        run.finish_step(step, metrics)
