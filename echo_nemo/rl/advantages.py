"""Advantage estimators: pure functions of rewards (and values), no model, no state.

Shapes: per-token tensors are [batch, T] with a 0/1 `mask` marking completion tokens
(right-padded); sequence-level rewards are [batch].
"""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) per token.

        delta_t = r_t + gamma * V_{t+1} - V_t          (V_{T} = 0 after the last real token)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                            (the value target, "returns")

    `rewards`, `values`, `mask`: [b, T]. Positions where mask = 0 get A = R = 0 and do not
    bootstrap (the episode ends at the last masked-in token). Returns (advantages, returns).
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    b, t_len = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(b, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(t_len)):
        next_value = values[:, t + 1] if t + 1 < t_len else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def group_normalized(rewards: torch.Tensor, group_size: int, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """GRPO advantages: each reward relative to the other samples of the same prompt.

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)      (std: unbiased, as in GRPO)

    `rewards`: [n_prompts * group_size], the samples of a prompt contiguous. A group with
    all-equal rewards gets A = 0 (nothing to learn from it). `scale=False` keeps only
    the mean subtraction (Dr. GRPO).
    """
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    g = rewards.view(-1, group_size).to(torch.float32)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale and group_size > 1:
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def reinforce_baseline(rewards: torch.Tensor, group_size: int = 1, baseline: float | None = None) -> torch.Tensor:
    """REINFORCE with a baseline: A_i = r_i - b.

    With group_size > 1, b is the leave-one-out mean of the other samples of the same
    prompt (RLOO): b_i = (sum_group r - r_i) / (k - 1). With group_size = 1, b is
    `baseline` (e.g. a running mean of past rewards) or, if None, the batch mean.
    """
    r = rewards.to(torch.float32)
    if group_size > 1:
        g = r.view(-1, group_size)
        b = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
        return (g - b).reshape(-1)
    return r - (r.mean() if baseline is None else baseline)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked-in entries (PPO's advantage normalisation)."""
    m = mask.to(x.dtype)
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    var = (((x - mean) ** 2) * m).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * m


def sequence_to_tokens(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Broadcast one advantage per sequence to every completion token: A_{i,t} = A_i * mask_{i,t}."""
    return adv[:, None].to(torch.float32) * mask.to(torch.float32)
