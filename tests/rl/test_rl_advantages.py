"""Advantage estimators against values computed by hand."""

import pytest
import torch

from echo_nemo.rl.advantages import (
    gae,
    group_normalized,
    reinforce_baseline,
    sequence_to_tokens,
    whiten,
)


def test_gae_short_trajectory_by_hand():
    # one trajectory of 3 tokens, then padding; gamma 0.9, lambda 0.5
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.6, 0.7, 9.0]])  # the value at a padded position is ignored
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.5)
    d2 = 1.0 + 0.9 * 0.0 - 0.7  # terminal: no bootstrap from the padded position
    d1 = 0.0 + 0.9 * 0.7 - 0.6
    d0 = 0.0 + 0.9 * 0.6 - 0.5
    a2 = d2
    a1 = d1 + 0.9 * 0.5 * a2
    a0 = d0 + 0.9 * 0.5 * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2, 0.0])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7, 0.0])


def test_gae_gamma1_lambda1_is_return_minus_value():
    r = torch.tensor([[0.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    v = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    assert adv.flatten().tolist() == pytest.approx([1.9, 1.8, 1.7, 2.0, 2.0, 0.0])
    assert ret.flatten().tolist() == pytest.approx([2.0, 2.0, 2.0, 3.0, 3.0, 0.0])


def test_group_normalised_with_ties_and_all_equal_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    adv = group_normalized(rewards, group_size=4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased: sqrt(1/3)
    half = 0.5 / (std + 1e-6)
    assert adv[:4].tolist() == pytest.approx([half, -half, -half, half])
    assert adv[4:8].tolist() == [0.0, 0.0, 0.0, 0.0]  # all-equal: nothing to learn, no NaN
    s3 = torch.tensor([0.0, 0.0, 0.0, 1.0]).std().item()
    assert adv[8:].tolist() == pytest.approx([-0.25 / (s3 + 1e-6)] * 3 + [0.75 / (s3 + 1e-6)])
    assert group_normalized(rewards, 4, scale=False)[:4].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])
    with pytest.raises(ValueError):
        group_normalized(rewards, group_size=5)


def test_reinforce_leave_one_out_and_fixed_baseline():
    r = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    # group of 3: b_0 = (0 + 0) / 2, b_1 = (1 + 0) / 2, ...
    assert reinforce_baseline(r, group_size=3).tolist() == pytest.approx([1.0, -0.5, -0.5, 0.0, 0.0, 0.0])
    assert reinforce_baseline(r[:3], baseline=0.25).tolist() == pytest.approx([0.75, -0.25, -0.25])
    assert reinforce_baseline(r[:3]).tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3])


def test_whiten_and_broadcast_respect_the_mask():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 0.0]])
    w = whiten(x, m)
    assert w.tolist()[0][:2] == pytest.approx([-1.0, 1.0], abs=1e-4)
    assert w[0, 2] == 0
    t = sequence_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
    assert t.tolist() == [[2.0, 2.0, 0.0], [0.0, -1.0, -1.0]]
