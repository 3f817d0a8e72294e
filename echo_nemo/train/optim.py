"""AdamW and the warmup-cosine learning-rate schedule (PAPER.md: cosine down to 0.1x peak)."""

from __future__ import annotations

import math

import torch

from echo_nemo.train.config import OptimConfig


def lr_factor(step: int, warmup: int, total: int, min_ratio: float, decay: int | None = None) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based).

    warmup (step < W):  (step + 1) / W
    constant until S = max(W, T - decay) (S = W when decay is None: cosine right after warmup)
    cosine after:       r + (1 - r) * 0.5 * (1 + cos(pi * p)),  p = (step - S) / max(1, T - S),
    clamped to 0 <= p <= 1, so the lr ends at r x peak (r = min_ratio) and stays there.
    A short `decay` is warmup-stable-decay: the full lr for most of the run.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    start = warmup if decay is None else max(warmup, total - decay)
    p = min(1.0, max(0, step - start) / max(1, total - start))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def build_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """Plain torch AdamW (megatron's optimizer hard-codes CUDA) and its LambdaLR schedule.

    Weight decay applies to matrices only; the model has no biases or norm weights, so in
    practice that is every parameter.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=True
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    return opt, sched
