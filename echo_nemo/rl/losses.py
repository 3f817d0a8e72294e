"""Loss terms of the policy-gradient algorithms: pure functions of tensors.

All per-token inputs are [batch, T] with a 0/1 `mask`; `masked_mean` averages over
the masked-in tokens of the whole batch (token-level mean, as in DAPO / NeMo-RL).
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(x * mask) / max(sum(mask), 1)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def clipped_pg_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, to minimise.

        ratio_t = exp(logp_t - logp_old_t)
        L = mean_t  max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))

    With clip = inf (or advantages from a single update) it is vanilla policy gradient.
    Returns (loss, stats) with stats `ratio` (mean) and `clipfrac` (share of tokens
    where the clipped term was the active one).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(ratio.dtype), mask)
        mean_ratio = masked_mean(ratio, mask)
    return loss, {"ratio": mean_ratio, "clipfrac": clipfrac}


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """PPO's clipped value loss, to minimise.

        V_clip = V_old + clip(V - V_old, -eps, eps)
        L = 0.5 * mean_t max((V - R)^2, (V_clip - R)^2)
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3).

        log_r = logp_ref - logp
        k1 = -log_r                   (unbiased, can be negative)
        k2 = 0.5 * log_r^2            (biased, low variance)
        k3 = exp(log_r) - 1 - log_r   (unbiased, always >= 0; GRPO's choice)
    All are 0 when the two models agree.
    """
    log_r = ref_logprobs - logprobs
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return torch.exp(log_r) - 1.0 - log_r
    raise ValueError(f"unknown KL estimator {kind!r}; expected k1, k2 or k3")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy H = -sum_v p_v log p_v of softmax(logits) over the last dim."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position: [b, T, V] x [b, T] -> [b, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
