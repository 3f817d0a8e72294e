"""Loss terms against values computed by hand, including the clipping edges."""

import math

import pytest
import torch

from echo_nemo.rl.losses import (
    clipped_pg_loss,
    clipped_value_loss,
    entropy_from_logits,
    kl_estimate,
    masked_mean,
)


def _lp(ratios):
    return torch.log(torch.tensor([ratios]))


def test_clipped_pg_is_the_plain_surrogate_at_ratio_one():
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    adv = torch.tensor([[1.0, -2.0, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, st = clipped_pg_loss(old.clone(), old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-(1.0 - 2.0) / 2)
    assert st["ratio"].item() == 1.0
    assert st["clipfrac"].item() == 0.0


@pytest.mark.parametrize(
    "ratio, adv, expected, clipped",
    [
        (1.5, 1.0, -1.2, True),  # positive advantage: gain capped at 1 + eps
        (0.5, 1.0, -0.5, False),  # positive advantage, ratio below 1 - eps: not clipped (pessimistic)
        (0.5, -1.0, 0.8, True),  # negative advantage: capped at 1 - eps
        (1.5, -1.0, 1.5, False),  # negative advantage, ratio above: full penalty
        (1.2, 1.0, -1.2, False),  # exactly on the edge: both terms equal
        (0.8, -1.0, 0.8, False),
    ],
)
def test_clipped_pg_clipping_edges(ratio, adv, expected, clipped):
    old = torch.zeros(1, 1)
    loss, st = clipped_pg_loss(_lp([ratio]), old, torch.tensor([[adv]]), torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert st["clipfrac"].item() == (1.0 if clipped else 0.0)


def test_clipped_pg_gradient_vanishes_when_clipped():
    lp = _lp([1.5]).requires_grad_(True)
    loss, _ = clipped_pg_loss(lp, torch.zeros(1, 1), torch.tensor([[1.0]]), torch.ones(1, 1), clip=0.2)
    loss.backward()
    assert lp.grad.item() == 0.0
    lp2 = _lp([1.1]).requires_grad_(True)
    loss2, _ = clipped_pg_loss(lp2, torch.zeros(1, 1), torch.tensor([[1.0]]), torch.ones(1, 1), clip=0.2)
    loss2.backward()
    assert lp2.grad.item() == pytest.approx(-1.1)  # d(-ratio)/dlogp = -ratio


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    ret = torch.tensor([[1.0, 1.0, -1.0]])
    v = torch.tensor([[0.5, 0.1, 0.5]])
    mask = torch.ones(1, 3)
    # token 0: V moved 0.5 > 0.2 toward the target: clipped V = 0.2, max((0.5)^2, (0.8)^2) = 0.64
    # token 1: inside the clip range: (0.9)^2 = 0.81 both ways
    # token 2: V moved away from the target: unclipped (1.5)^2 = 2.25 is the larger
    expected = 0.5 * (0.64 + 0.81 + 2.25) / 3
    assert clipped_value_loss(v, old, ret, mask, clip=0.2).item() == pytest.approx(expected)


def test_kl_estimators_by_hand_and_zero_when_equal():
    lp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -1.0])
    log_r = ref - lp  # [-0.5, 1.0]
    assert kl_estimate(lp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert kl_estimate(lp, ref, "k2").tolist() == pytest.approx([0.125, 0.5])
    assert kl_estimate(lp, ref, "k3").tolist() == pytest.approx([math.exp(x) - 1 - x for x in log_r.tolist()])
    for kind in ("k1", "k2", "k3"):
        assert kl_estimate(lp, lp.clone(), kind).abs().max().item() == 0.0
    with pytest.raises(ValueError):
        kl_estimate(lp, ref, "k4")


def test_entropy_and_masked_mean():
    assert entropy_from_logits(torch.zeros(2, 8)).tolist() == pytest.approx([math.log(8)] * 2)
    assert entropy_from_logits(torch.tensor([[0.0, -1e9]])).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_mean(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([1.0, 1.0, 0.0])).item() == 1.5
    assert masked_mean(torch.tensor([1.0]), torch.tensor([0.0])).item() == 0.0


def test_lr_schedule_warmup_stable_decay_by_hand():
    from echo_nemo.optim import OptimConfig

    def lr_lambda(total, warmup_frac, min_ratio, decay_frac=1.0):
        return OptimConfig(warmup_frac=warmup_frac, min_lr_ratio=min_ratio, decay_frac=decay_frac).schedule(total)

    cosine = lr_lambda(10, warmup_frac=0.2, min_ratio=0.1)  # warmup 2 steps, cosine over 8
    assert [cosine(0), cosine(1)] == [0.5, 1.0]
    assert cosine(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert cosine(10) == pytest.approx(0.1)
    wsd = lr_lambda(10, warmup_frac=0.2, min_ratio=0.1, decay_frac=0.4)  # constant 2..6, cosine 6..10
    assert [wsd(s) for s in (2, 4, 6)] == [1.0, 1.0, 1.0]
    assert wsd(8) == pytest.approx(0.55) and wsd(10) == pytest.approx(0.1)
    assert lr_lambda(10, 0.0, 0.5, decay_frac=0.0)(9) == 1.0  # no decay at all


def test_rl_config_rejects_an_out_of_range_decay_frac():
    from echo_nemo.errors import UserError
    from echo_nemo.rl.config import RLConfig

    cfg = RLConfig()
    cfg.optim.decay_frac = 1.5
    with pytest.raises(UserError, match=r"optim\.decay_frac must be in \[0, 1\], got 1.5"):
        cfg.validate()


def test_built_adamw_takes_the_adamw_step_by_hand():
    """OptimConfig.build's AdamW (torch's fused kernel) against the formula, two steps:
    m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    after p *= 1 - lr wd (matrices only)."""
    from echo_nemo.optim import OptimConfig

    cfg = OptimConfig(lr=0.1, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1, warmup_frac=0.0)
    g = torch.Generator().manual_seed(0)
    w, b = torch.nn.Parameter(torch.randn(3, 4, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))
    opt, _ = cfg.build([w, b], total_steps=10)
    ref = {id(p): (p.detach().clone(), torch.zeros_like(p), torch.zeros_like(p)) for p in (w, b)}
    for t in (1, 2):
        for p in (w, b):
            p.grad = torch.randn(p.shape, generator=g)
            x, m, v = ref[id(p)]
            x.mul_(1 - 0.1 * (0.1 if p.dim() >= 2 else 0.0))
            m.mul_(0.9).add_(0.1 * p.grad)
            v.mul_(0.95).add_(0.05 * p.grad**2)
            x.sub_(0.1 * (m / (1 - 0.9**t)) / ((v / (1 - 0.95**t)).sqrt() + 1e-8))
        opt.step()
        for p in (w, b):
            torch.testing.assert_close(p.detach(), ref[id(p)][0], atol=1e-6, rtol=1e-6)


def test_global_grad_norm_and_clip_by_hand():
    from echo_nemo.distributed import init_distributed
    from echo_nemo.parallel import clip_gradients

    init_distributed(tp=1, seed=0)
    ps = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(1))]
    ps[0].grad = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    ps[1].grad = torch.tensor([12.0, 0.0, 0.0])  # ps[2] has no gradient
    assert clip_gradients(ps, max_norm=0.0) == pytest.approx(13.0)  # sqrt(9 + 16 + 144), unclipped
    assert ps[1].grad[0] == 12.0
    assert clip_gradients(ps, max_norm=1.3) == pytest.approx(13.0)
    torch.testing.assert_close(ps[1].grad, torch.tensor([1.2, 0.0, 0.0]), atol=1e-6, rtol=1e-6)
