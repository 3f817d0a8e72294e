"""The RL step, written once for every algorithm: `train(run, algorithm)`.

    per step:  sample -> score -> experience (log-probs; KL penalty into the reward)
               -> the algorithm's advantages -> update -> log / eval / checkpoint
               -> stop here if a rank got SIGTERM/SIGUSR1 (saved: echo_nemo.preempt)

Each phase runs under `run.timer(name)`, so `time/<name>_s` is logged for every step.
`policy_update` is the clipped policy-gradient update PPO, GRPO and REINFORCE share;
`optimizer_step` is how every model here (policy, critic, Expert Iteration's SFT) takes a
step: DP-average, TP-aware global clip (echo_nemo.parallel), AdamW.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from echo_nemo import parallel as P
from echo_nemo import preempt
from echo_nemo.rl.experience import Experience, length_batches, sequence_logprobs
from echo_nemo.rl.losses import clipped_pg_loss, kl_estimate, masked_mean

if TYPE_CHECKING:
    from echo_nemo.rl.algorithm import Algorithm
    from echo_nemo.rl.run import RLRun


def train(run: RLRun, algo: Algorithm) -> None:
    """Run (or resume) the configured number of steps."""
    algo.setup(run)
    run.resume()
    for step in run.steps():
        with run.timer("generate"):
            batch = algo.sample(run, step)
        with run.timer("score"):
            rewards, formats = run.score(batch)
        with run.timer("logprobs"):
            exp = algo.experience(run, batch, rewards)
            if run.kl_in_reward and exp.ref_logprobs is not None:
                # k1 per token: the penalty the sample's reward pays (algorithms read it
                # through exp.sequence_rewards() or exp.token_rewards())
                exp.kl_penalty = run.cfg.kl.coef * (exp.old_logprobs - exp.ref_logprobs) * exp.mask
        with run.timer("advantages"):
            algo.advantages(run, exp)
        with run.timer("update"):
            stats, entropy = algo.update(run, exp, step)
        metrics = run.step_metrics(batch.rollout, rewards, formats, exp, entropy)
        metrics.update(exp.stats)
        metrics.update(stats)
        stop = run.finish_step(step, metrics)  # logs, evaluates, saves (also when stopping)
        if stop:
            raise preempt.Preempted(stop, step, run.run_dir / "checkpoints" / f"step_{step}")


def optimizer_step(params, opt: torch.optim.Optimizer, grad_clip: float, sched=None) -> float:
    """DP-average and clip the gradients by their global norm, step, zero; returns that norm."""
    params = list(params)
    norm = P.reduce_and_clip(params, grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if sched is not None:
        sched.step()
    return norm


def policy_update(run: RLRun, exp: Experience, clip: float) -> tuple[dict[str, float], torch.Tensor]:
    """Clipped policy-gradient update over `optim.epochs` passes (one optimizer step each).

    loss = clipped_pg + kl.coef * KL_est (when the KL term is in the loss) - entropy_coef * entropy,
    each a token mean over the whole rollout batch (micro-batches weighted by their
    token counts). Returns (stats, per-token entropy of the first pass, detached).
    `policy/ratio_first_epoch` is the mean ratio before any step: exactly 1.
    """
    cfg = run.cfg
    kl_in_loss = not run.kl_in_reward and exp.ref_logprobs is not None
    total_tokens = exp.mask.sum().clamp(min=1)
    stats: dict[str, float] = {}
    entropy = torch.zeros_like(exp.mask)
    batches = length_batches(exp.mask, cfg.optim.micro_batch_size)
    run.model.train()
    for epoch in range(cfg.optim.epochs):
        sums = {"loss/policy": 0.0, "loss/kl": 0.0, "policy/ratio": 0.0, "policy/clipfrac": 0.0}
        for rows, w in batches:
            mask = exp.mask[rows, : w - 1]
            weight = mask.sum() / total_tokens
            need_ent = epoch == 0 or cfg.entropy_coef > 0
            lp, ent = sequence_logprobs(run.model, exp.tokens[rows, :w], cfg.rollout.temperature,
                                        run.tokenizer.vocab_size, with_entropy=need_ent)
            # on-policy (one epoch, no reference): the old log-probs are this forward's own
            old = exp.old_logprobs[rows, : w - 1] if exp.old_logprobs is not None else lp.detach()
            pg, st = clipped_pg_loss(lp, old, exp.advantages[rows, : w - 1], mask, clip)
            loss = pg
            if kl_in_loss:
                kl = masked_mean(kl_estimate(lp, exp.ref_logprobs[rows, : w - 1], cfg.kl.estimator), mask)
                loss = loss + cfg.kl.coef * kl
                sums["loss/kl"] += float(kl.detach()) * float(weight)
            if cfg.entropy_coef > 0:
                loss = loss - cfg.entropy_coef * masked_mean(ent, mask)
            (loss * weight).backward()
            if epoch == 0:
                entropy[rows, : w - 1] = ent.detach()
            sums["loss/policy"] += float(pg.detach()) * float(weight)
            sums["policy/ratio"] += float(st["ratio"]) * float(weight)
            sums["policy/clipfrac"] += float(st["clipfrac"]) * float(weight)
        if epoch == 0:
            stats["policy/ratio_first_epoch"] = sums["policy/ratio"]
        stats.update(sums)
        stats["grad_norm"] = optimizer_step(run.model.parameters(), run.opt, cfg.optim.grad_clip)
    stats["lr"] = run.opt.param_groups[0]["lr"]
    run.sched.step()
    return stats, entropy
