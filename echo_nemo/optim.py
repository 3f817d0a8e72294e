"""The one optimizer every trainer builds and the one step every trainer takes.

`OptimConfig.build()`: AdamW with warmup, then cosine decay to `min_lr_ratio` x peak
(PAPER.md). Pretraining gives its warmup in steps (`warmup_steps: 5000`), RL as a
fraction of the run (`warmup_frac: 0.03`); both go through the same `lr_factor`.

`optimizer_step()`: what pretraining, the RL policy and critic, and Expert Iteration's
SFT do between backward and the next forward: DP-average and clip the gradients
(echo_nemo.parallel), AdamW step, zero the gradients, advance the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from echo_nemo.errors import UserError


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


@dataclass
class OptimConfig:
    """AdamW + warmup-cosine schedule; `build()` makes both."""

    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine down to this fraction of lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # on matrices only
    warmup_steps: int | None = None  # warmup in optimizer steps; null: warmup_frac of the run
    warmup_frac: float = 0.0
    decay_frac: float = 1.0  # the cosine spans this last fraction of steps (constant before it)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    def validate(self, where: str = "optim") -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"{where}.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise UserError(f"{where}.warmup_steps must be >= 0, got {self.warmup_steps}")
        for key in ("warmup_frac", "min_lr_ratio", "decay_frac"):
            if not 0 <= getattr(self, key) <= 1:
                raise UserError(f"{where}.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.lr <= 0:
            raise UserError(f"{where}.lr must be > 0, got {self.lr}")

    def schedule(self, total_steps: int):
        """step -> lr multiplier for a run of `total_steps` optimizer steps."""
        warmup = self.warmup_steps
        if warmup is None:
            warmup = max(0, int(round(self.warmup_frac * total_steps)))
        decay = int(round(self.decay_frac * total_steps))
        return lambda step: lr_factor(step, warmup, total_steps, self.min_lr_ratio, decay)

    def build(self, params: Any, total_steps: int, lr: float | None = None) -> tuple[Any, Any]:
        """(torch AdamW, LambdaLR) over `params` (a module's parameters, or a module).

        Plain torch AdamW: megatron's optimizer hard-codes CUDA. Weight decay applies to
        matrices only (dim >= 2), never to norms or biases. Its fused kernel updates each
        parameter in one pass over parameter, gradient and moments (on CPU the foreach form
        is a loop of ~8 separate elementwise passes: 0.36-0.71 s of CPU a step at 150m
        against 0.10-0.12 fused); the two agree to float rounding.
        """
        import torch  # loaded by the trainer that builds one: reading a recipe stays light

        if isinstance(params, torch.nn.Module):
            params = params.parameters()
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=self.lr if lr is None else lr, betas=tuple(self.betas),
                                eps=self.eps, fused=True)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, self.schedule(total_steps))


def optimizer_step(params: Any, opt: Any, grad_clip: float, sched: Any = None) -> float:
    """DP-average the gradients and clip them by their global norm, step, zero them, then
    advance `sched` if given; returns the norm before clipping.

    The schedule steps after the optimizer, so step k runs at lr_factor(k) (torch's
    LambdaLR order).
    """
    # echo_nemo.parallel loads torch and megatron: only a trainer taking a step pays for
    # them, not a command that just reads a recipe
    from echo_nemo import parallel as P

    norm = P.reduce_and_clip(list(params), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if sched is not None:
        sched.step()
    return norm
