"""REINFORCE with a baseline.

    per step:  generate k samples per prompt -> score -> A_i = r_i - b_i -> policy gradient
    loss = -mean_t A_i * log pi(y_t)      (one update per batch, so the ratio is 1; the
                                           clipped form is used so extra epochs stay safe)

The baseline b_i is the leave-one-out mean reward of the other samples of the same
prompt (RLOO) when samples_per_prompt > 1, else an exponential moving average of past
batch rewards (`reinforce.ema_decay`, kept in the checkpoint). KL: in the reward by
default (k1 summed over the sample), or with `kl.in_reward: false` in the loss.
"""

from __future__ import annotations

from echo_nemo.rl.advantages import reinforce_baseline, sequence_to_tokens
from echo_nemo.rl.algorithm import Algorithm
from echo_nemo.rl.experience import Experience
from echo_nemo.rl.state import RLRun


class Reinforce(Algorithm):
    kl_in_reward = True

    def clip(self, run: RLRun) -> float:
        return run.cfg.reinforce.clip

    def advantages(self, run: RLRun, exp: Experience) -> None:
        cfg, state = run.cfg, run.state.algo_state  # the EMA baseline survives a resume
        rewards = exp.sequence_rewards()
        k = cfg.rollout.samples_per_prompt
        if k > 1:
            adv = reinforce_baseline(rewards, group_size=k)
        else:
            adv = reinforce_baseline(rewards, baseline=state.get("ema"))
            mean = float(rewards.mean())
            decay = cfg.reinforce.ema_decay
            state["ema"] = mean if state.get("ema") is None else decay * state["ema"] + (1 - decay) * mean
            exp.stats["baseline/ema"] = state["ema"]
        exp.advantages = sequence_to_tokens(adv, exp.mask)
