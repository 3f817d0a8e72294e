"""PPO with a critic (Schulman et al. 2017), as the study ran it (PAPER.md).

    per step:  generate -> score -> per-token rewards r_t = -beta * k1_t (+ R at the last token)
               -> values V_t from the critic -> GAE(gamma, lambda) advantages, returns
               -> clipped policy update (actor) and clipped value update (critic)

The critic is its own copy of the starting model whose output layer is replaced by a
scalar value head (`ValueHead`), trained with its own optimizer and learning rate
(`optim.critic_lr`, the same schedule). KL: in the reward as above (PPO's default), or
with `kl.in_reward: false` as a loss term on the actor. kl.coef = 0 loads no reference.
"""

from __future__ import annotations

import torch

from echo_nemo.model.forward import causal_forward
from echo_nemo.optim import optimizer_step
from echo_nemo.rl.advantages import gae, whiten
from echo_nemo.rl.algorithm import Algorithm
from echo_nemo.rl.experience import Experience, length_batches
from echo_nemo.rl.losses import clipped_value_loss, masked_mean
from echo_nemo.rl.models import AuxModel, clone_model
from echo_nemo.rl.policy import policy_update
from echo_nemo.rl.state import RLRun


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
    critic.output_layer = ValueHead(critic.config.hidden_size).to(next(critic.parameters()).device)
    critic.share_embeddings_and_output_weights = False
    return critic


def critic_values(critic, tokens: torch.Tensor) -> torch.Tensor:
    """V at every label position: [n, L-1] (the value of the prefix before token j+1)."""
    return causal_forward(critic, tokens)[:, :-1, 0].float()


class PPO(Algorithm):
    kl_in_reward = True

    def clip(self, run: RLRun) -> float:
        return run.cfg.ppo.clip

    def setup(self, run: RLRun) -> None:
        super().setup(run)
        critic = build_critic(run)
        opt, sched = run.cfg.optim.build(critic, run.total, lr=run.cfg.optim.critic_lr)
        run.state.aux["critic"] = AuxModel(critic, opt, sched)

    def advantages(self, run: RLRun, exp: Experience) -> None:
        """Token rewards (terminal reward + per-token KL penalty), GAE, whitening."""
        cfg, critic = run.cfg, run.state.aux["critic"].module
        values = torch.zeros_like(exp.mask)
        with torch.no_grad():
            for rows, w in length_batches(exp.mask, cfg.optim.micro_batch_size):
                values[rows, : w - 1] = critic_values(critic, exp.tokens[rows, :w])
        values = values * exp.mask
        adv, returns = gae(exp.token_rewards(), values, exp.mask, cfg.ppo.gamma, cfg.ppo.lam)
        exp.values, exp.returns = values, returns
        exp.advantages = whiten(adv, exp.mask) if cfg.ppo.whiten_advantages else adv

    def update(self, run: RLRun, exp: Experience, step: int):
        stats: dict[str, float] = {}
        entropy = None
        if step > run.cfg.ppo.critic_warmup_steps:
            stats, entropy = policy_update(run, exp, self.clip(run))
        else:  # the actor waits while the critic warms up; its schedule still advances
            run.state.sched.step()
        stats.update(critic_update(run, exp))
        return stats, entropy


def critic_update(run: RLRun, exp: Experience) -> dict[str, float]:
    """Clipped value loss over `optim.epochs` passes, one optimizer step each."""
    cfg, aux = run.cfg, run.state.aux["critic"]
    total = exp.mask.sum().clamp(min=1)
    aux.module.train()
    loss_sum, norm = 0.0, 0.0
    batches = length_batches(exp.mask, cfg.optim.micro_batch_size)
    for _ in range(cfg.optim.epochs):
        loss_sum = 0.0
        for rows, w in batches:
            mask = exp.mask[rows, : w - 1]
            weight = mask.sum() / total
            v = critic_values(aux.module, exp.tokens[rows, :w])
            loss = cfg.ppo.vf_coef * clipped_value_loss(v, exp.values[rows, : w - 1], exp.returns[rows, : w - 1],
                                                        mask, cfg.ppo.value_clip)
            (loss * weight).backward()
            loss_sum += float(loss.detach()) * float(weight)
        norm = optimizer_step(aux.module.parameters(), aux.opt, cfg.optim.grad_clip)
    aux.sched.step()
    return {"loss/value": loss_sum, "critic/grad_norm": norm,
            "critic/value_mean": float(masked_mean(exp.values, exp.mask)),
            "critic/return_mean": float(masked_mean(exp.returns, exp.mask))}
