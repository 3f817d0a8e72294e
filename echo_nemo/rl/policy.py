"""The policy's passes over an experience, shared by PPO, GRPO and REINFORCE.

- `make_experience`: training tensors with the old (and reference) log-probs, before the update;
- `policy_update`: the clipped policy-gradient update, one optimizer step per epoch
  (echo_nemo.optim.optimizer_step: DP-average, TP-aware global clip, AdamW).
"""

from __future__ import annotations

import torch

from echo_nemo.model.generate import Rollout
from echo_nemo.optim import optimizer_step
from echo_nemo.rl.experience import Experience, build_experience, length_batches, sequence_logprobs
from echo_nemo.rl.losses import clipped_pg_loss, kl_estimate, masked_mean
from echo_nemo.rl.packing import packed_logprobs, prefix_batches
from echo_nemo.rl.state import RLRun


def batches(exp: Experience, size: int) -> list[tuple[torch.Tensor, int]]:
    """The policy's micro-batches [(rows, width)]: consecutive rows when the experience
    knows its shared prompts (each computed once), else rows of similar length."""
    if exp.prompt_lens is not None:
        return prefix_batches(exp, size)
    return length_batches(exp.mask, size)


def batch_logprobs(run: RLRun, model, exp: Experience, rows: torch.Tensor, width: int, with_entropy: bool):
    """Log-probs (and entropy) of `model` at the micro-batch's labels, [len(rows), width - 1]."""
    temperature, vocab = run.cfg.rollout.temperature, run.tokenizer.vocab_size
    if exp.prompt_lens is not None:
        return packed_logprobs(model, exp, rows, width, temperature, vocab, with_entropy)
    return sequence_logprobs(model, exp.tokens[rows, :width], temperature, vocab, with_entropy)


def logprobs(run: RLRun, model, exp: Experience, with_entropy: bool = False):
    """Per-label log-probs (and entropy) of `model` over micro-batches, without grad."""
    lps = torch.zeros_like(exp.mask)
    ents = torch.zeros_like(exp.mask) if with_entropy else None
    with torch.no_grad():
        for rows, w in batches(exp, run.cfg.optim.micro_batch_size):
            lp, ent = batch_logprobs(run, model, exp, rows, w, with_entropy)
            lps[rows, : w - 1] = lp
            if ents is not None:
                ents[rows, : w - 1] = ent
    return lps, ents


def make_experience(run: RLRun, rollout: Rollout, rewards: list[float]) -> Experience:
    """Experience with old (and reference) log-probs computed by a training-mode forward.

    With one update epoch and no reference model the old log-probs are those of the
    update's own forward pass before its step (the ratio is exactly 1), so this
    separate pass is skipped: `policy_update` takes them from that forward.
    """
    exp = build_experience(rollout, rewards, run.pad_id, run.device)
    if run.cfg.optim.epochs > 1 or run.reference is not None:
        exp.old_logprobs, _ = logprobs(run, run.model, exp)
    if run.reference is not None:
        exp.ref_logprobs, _ = logprobs(run, run.reference, exp)
    return exp


def policy_update(run: RLRun, exp: Experience, clip: float) -> tuple[dict[str, float], torch.Tensor]:
    """Clipped policy-gradient update over `optim.epochs` passes (one optimizer step each).

    loss = clipped_pg + kl.coef * KL_est (when the KL term is in the loss) - entropy_coef * entropy,
    each a token mean over the whole rollout batch (micro-batches weighted by their
    token counts). Returns (stats, per-token entropy of the first pass, detached).
    `policy/ratio_first_epoch` is the mean ratio before any step: exactly 1.
    """
    cfg, state = run.cfg, run.state
    stats: dict[str, float] = {}
    entropy = torch.zeros_like(exp.mask)
    micro = batches(exp, cfg.optim.micro_batch_size)
    run.model.train()
    for epoch in range(cfg.optim.epochs):
        sums = _policy_pass(run, exp, micro, clip, entropy if epoch == 0 else None)
        if epoch == 0:
            stats["policy/ratio_first_epoch"] = sums["policy/ratio"]
        stats.update(sums)
        stats["grad_norm"] = optimizer_step(run.model.parameters(), state.opt, cfg.optim.grad_clip)
    stats["lr"] = state.opt.param_groups[0]["lr"]
    state.sched.step()
    return stats, entropy


def _policy_pass(run: RLRun, exp: Experience, batches, clip: float,
                 entropy: torch.Tensor | None) -> dict[str, float]:
    """One pass of backward over every micro-batch (gradients accumulate); fills `entropy`
    when given. Returns the pass's token-weighted loss and ratio statistics."""
    cfg = run.cfg
    kl_in_loss = not run.kl_in_reward and exp.ref_logprobs is not None
    total_tokens = exp.mask.sum().clamp(min=1)
    sums = {"loss/policy": 0.0, "loss/kl": 0.0, "policy/ratio": 0.0, "policy/clipfrac": 0.0}
    for rows, w in batches:
        mask = exp.mask[rows, : w - 1]
        weight = mask.sum() / total_tokens
        need_ent = entropy is not None or cfg.entropy_coef > 0
        lp, ent = batch_logprobs(run, run.model, exp, rows, w, need_ent)
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
        if entropy is not None:
            entropy[rows, : w - 1] = ent.detach()
        sums["loss/policy"] += float(pg.detach()) * float(weight)
        sums["policy/ratio"] += float(st["ratio"]) * float(weight)
        sums["policy/clipfrac"] += float(st["clipfrac"]) * float(weight)
    return sums
