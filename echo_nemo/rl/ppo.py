"""PPO with a critic (Schulman et al. 2017), as the study ran it (PAPER.md).

    per step:  generate -> score -> per-token rewards r_t = -beta * k1_t (+ R at the last token)
               -> values V_t from the critic -> GAE(gamma, lambda) advantages, returns
               -> clipped policy update (actor) and clipped value update (critic)

The critic is its own copy of the starting model whose output layer is replaced by a
scalar value head (`ValueHead`), trained with its own optimizer and learning rate.
KL: in the reward as above (PPO's default), or with `kl.in_reward: false` as a
loss term on the actor. kl.coef = 0 loads no reference model.
"""

from __future__ import annotations

import torch

from echo_nemo.rl.advantages import gae, whiten
from echo_nemo.rl.common import Experience, RLRun, clone_model, length_batches, policy_update
from echo_nemo.rl.losses import clipped_value_loss, masked_mean


class ValueHead(torch.nn.Module):
    """Scalar head in the place of GPTModel.output_layer: [s, b, h] -> [s, b, 1].

    Called like megatron's output layer (`weight=`, `runtime_gather_output=` are
    ignored) and named `weight`/`bias` so dist-checkpointing saves it like one. Zero
    init: the critic starts by predicting 0 for every state.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, hidden))
        self.bias = torch.nn.Parameter(torch.zeros(1))

    def forward(self, hidden_states: torch.Tensor, weight=None, runtime_gather_output=None):
        return torch.nn.functional.linear(hidden_states.float(), self.weight.float(), self.bias.float()), None


def build_critic(run: RLRun):
    """A copy of the starting policy with a value head; untied so the head checkpoints as itself."""
    critic = clone_model(run.model, run.model_config)
    hidden = critic.config.hidden_size
    critic.output_layer = ValueHead(hidden).to(next(critic.parameters()).device)
    critic.share_embeddings_and_output_weights = False
    return critic


def critic_values(run: RLRun, critic, tokens: torch.Tensor) -> torch.Tensor:
    """V at every label position: [n, L-1] (the value of the prefix before token j+1)."""
    from echo_nemo.model.build import causal_forward

    return causal_forward(critic, tokens)[:, :-1, 0].float()


def advantages(run: RLRun, exp: Experience) -> None:
    """Token rewards (terminal reward + per-token KL penalty), GAE, whitening."""
    cfg = run.cfg
    values = torch.zeros_like(exp.mask)
    with torch.no_grad():
        for rows, w in length_batches(exp.mask, cfg.optim.micro_batch_size):
            values[rows, : w - 1] = critic_values(run, run.critic, exp.tokens[rows, :w])
    values = values * exp.mask
    token_rewards = torch.zeros_like(exp.mask)
    last = exp.mask.cumsum(-1).argmax(-1)  # index of each sample's last completion token
    token_rewards[torch.arange(len(exp)), last] = exp.rewards
    if cfg.kl_in_reward() and exp.ref_logprobs is not None:
        token_rewards = token_rewards - cfg.kl.coef * (exp.old_logprobs - exp.ref_logprobs) * exp.mask
    adv, returns = gae(token_rewards, values, exp.mask, cfg.ppo.gamma, cfg.ppo.lam)
    exp.values, exp.returns = values, returns
    exp.advantages = whiten(adv, exp.mask) if cfg.ppo.whiten_advantages else adv


def critic_update(run: RLRun, exp: Experience) -> dict[str, float]:
    cfg = run.cfg
    total = exp.mask.sum().clamp(min=1)
    run.critic.train()
    loss_sum = 0.0
    batches = length_batches(exp.mask, cfg.optim.micro_batch_size)
    for _ in range(cfg.optim.epochs):
        loss_sum = 0.0
        for rows, w in batches:
            mask = exp.mask[rows, : w - 1]
            weight = mask.sum() / total
            v = critic_values(run, run.critic, exp.tokens[rows, :w])
            loss = cfg.ppo.vf_coef * clipped_value_loss(v, exp.values[rows, : w - 1], exp.returns[rows, : w - 1],
                                                        mask, cfg.ppo.value_clip)
            (loss * weight).backward()
            loss_sum += float(loss.detach()) * float(weight)
        norm = run.clip_and_step(run.critic, run.critic_opt)
    run.critic_sched.step()
    return {"loss/value": loss_sum, "critic/grad_norm": norm,
            "critic/value_mean": float(masked_mean(exp.values, exp.mask)),
            "critic/return_mean": float(masked_mean(exp.returns, exp.mask))}


def train(run: RLRun) -> None:
    cfg = run.cfg
    run.critic = build_critic(run)
    run.opt, run.sched = run.optimizer(run.model.parameters(), cfg.optim.lr)
    run.critic_opt, run.critic_sched = run.optimizer(run.critic.parameters(), cfg.optim.critic_lr)
    run.extra_models["critic"] = (run.critic, run.critic_opt)
    run.resume()
    if run.start_step and "critic_sched" in run.algo_state:
        run.critic_sched.load_state_dict(run.algo_state["critic_sched"])
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
        stats: dict[str, float] = {}
        entropy = None
        with run.timer("update"):
            if step > cfg.ppo.critic_warmup_steps:
                stats, entropy = policy_update(run, exp, cfg.ppo.clip, kl_in_loss=not cfg.kl_in_reward())
            else:
                run.sched.step()
            stats.update(critic_update(run, exp))
        run.algo_state["critic_sched"] = run.critic_sched.state_dict()
        metrics = run.step_metrics(rollout, rewards, formats, exp, entropy)
        metrics.update(stats)
        run.finish_step(step, metrics)
