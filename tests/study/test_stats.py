"""The bootstrap interval against exact bootstrap distributions and a coverage check, and the
four-outcome verdict rule on synthetic measurements."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from echo_nemo.study.stats import (
    HOLDS,
    INCONCLUSIVE,
    NOT_HOLDS,
    NOT_TESTABLE,
    Interval,
    difference_interval,
    expanded_alpha,
    mean_interval,
    resample_means,
    verdict,
)


def _freqs(stats: np.ndarray, support: list[float]) -> list[float]:
    assert np.all(np.isin(np.round(stats, 9), np.round(support, 9))), set(np.round(stats, 6)) - set(support)
    return [float(np.mean(np.isclose(stats, s))) for s in support]


def test_identical_values_give_a_point_interval():
    iv = mean_interval([[0.3, 0.3, 0.3], [0.3, 0.3, 0.3]], seed=4, resamples=500)
    assert (iv.estimate, iv.lo, iv.hi) == pytest.approx((0.3, 0.3, 0.3))
    assert iv.runs == 6 and iv.groups == 2
    d = difference_interval([[0.2, 0.2]], [[0.5], [0.5]], seed=1, resamples=300)
    assert (d.estimate, d.lo, d.hi) == pytest.approx((0.3, 0.3, 0.3))


@pytest.mark.parametrize("groups", [[[0.0, 0.0, 1.0]], [[0.0], [0.0], [1.0]]])
def test_flat_bootstrap_matches_the_exact_binomial_distribution(groups):
    # the mean of 3 draws from {0, 0, 1}: k ones ~ Binomial(3, 1/3), P = 8, 12, 6, 1 (/27);
    # one pretraining seed with 3 runs and 3 seeds with one run each are both the plain bootstrap
    stats = resample_means(groups, 40_000, np.random.default_rng(0))
    exact = [8 / 27, 12 / 27, 6 / 27, 1 / 27]
    assert _freqs(stats, [0.0, 1 / 3, 2 / 3, 1.0]) == pytest.approx(exact, abs=0.01)


def test_hierarchical_bootstrap_resamples_pretraining_seeds_first():
    # two pretraining seeds, constant within: draws of whole seeds give means 0, 0.5, 1 with
    # P = 1/4, 1/2, 1/4; a flat bootstrap over the 4 runs would also give 0.25 and 0.75
    stats = resample_means([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], 40_000, np.random.default_rng(1))
    assert _freqs(stats, [0.0, 0.5, 1.0]) == pytest.approx([0.25, 0.5, 0.25], abs=0.01)
    # within-seed draws: one seed holding {0, 1} and one holding {1, 1}
    stats = resample_means([[0.0, 1.0], [1.0, 1.0]], 40_000, np.random.default_rng(2))
    # seeds (A,A): mean of 4 draws from {0,1}; (A,B)/(B,A): (x + 2) / 4 with x ~ Bin(2, 1/2); (B,B): 1
    p = {0.0: 0.25 / 16, 0.25: 0.25 * 4 / 16, 0.5: 0.25 * 6 / 16 + 0.5 * 0.25, 0.75: 0.25 * 4 / 16 + 0.5 * 0.5,
         1.0: 0.25 / 16 + 0.5 * 0.25 + 0.25}
    assert sum(p.values()) == pytest.approx(1.0)
    assert _freqs(stats, list(p)) == pytest.approx(list(p.values()), abs=0.01)


def test_interval_matches_a_direct_numpy_bootstrap():
    x = np.random.default_rng(7).normal(0.4, 0.1, size=12)
    iv = mean_interval([[v] for v in x], seed=3, resamples=20_000)
    rng = np.random.default_rng(11)  # an independent direct computation: x[idx].mean per resample
    direct = x[rng.integers(len(x), size=(20_000, len(x)))].mean(axis=1)
    # the expanded tail at n = 12: z = sqrt(12/11) * t_11(0.975) = 1.0445 * 2.2010 (a t table's value)
    tail = 2 * (1 - NormalDist().cdf((12 / 11) ** 0.5 * 2.2010))
    assert expanded_alpha(12, 0.95) == pytest.approx(tail, rel=1e-3)
    lo, hi = np.quantile(direct, [tail / 2, 1 - tail / 2])
    assert iv.estimate == pytest.approx(x.mean())
    assert iv.lo == pytest.approx(lo, abs=0.004) and iv.hi == pytest.approx(hi, abs=0.004)
    again = mean_interval([[v] for v in x], seed=3, resamples=20_000)
    assert (again.lo, again.hi) == (iv.lo, iv.hi)  # seeded


def test_expanded_tails_against_t_table_values():
    # z = sqrt(n / (n - 1)) * t_{n-1}(0.975): t_5 = 2.5706, t_2 = 4.3027 (t tables)
    for n, t975 in [(6, 2.5706), (3, 4.3027)]:
        z = (n / (n - 1)) ** 0.5 * t975
        assert expanded_alpha(n, 0.95) == pytest.approx(2 * (1 - NormalDist().cdf(z)), rel=1e-3)
    assert expanded_alpha(1, 0.95) == pytest.approx(0.05)  # one run: nothing to widen
    assert expanded_alpha(10_000, 0.95) == pytest.approx(0.05, abs=2e-4)  # large n: the plain interval


def _coverage(groups: int, per: int, reps: int, seed: int) -> float:
    rng, hits = np.random.default_rng(seed), 0
    for r in range(reps):
        x = rng.normal(1.0, 2.0, size=(groups, per))
        iv = mean_interval(x.tolist(), seed=r, resamples=2000)
        hits += iv.lo <= 1.0 <= iv.hi
    return hits / reps


def test_coverage_on_a_normal_sample_is_near_95_percent():
    # n = 20: the expanded interval near 95% (the plain percentile one undercovers, ~93%)
    assert 0.91 <= _coverage(1, 20, 300, 2026) <= 0.99


def test_coverage_at_the_study_design_of_2_by_3_runs():
    # 2 pretraining seeds x 3 RL seeds, no variation between pretrainings: the plain
    # percentile interval covers ~87% (docs/study.md, Intervals), the expanded one ~92%
    assert _coverage(2, 3, 600, 7) >= 0.91  # this draw: expanded 0.935, plain 0.89


def test_difference_interval_coverage_and_sign():
    rng = np.random.default_rng(5)
    a = [list(rng.normal(0.5, 0.05, 3)) for _ in range(2)]
    b = [list(rng.normal(0.7, 0.05, 3)) for _ in range(2)]
    d = difference_interval(a, b, seed=0, resamples=4000)
    assert d.estimate == pytest.approx(np.mean(b) - np.mean(a))
    assert 0 < d.lo < d.estimate < d.hi and d.runs == 12 and d.groups == 4


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one run"):
        mean_interval([[]])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([[1.0, float("nan")]])
    with pytest.raises(ValueError, match="direction"):
        verdict(Interval(0.1, 0.0, 0.2), direction=0)


# ----------------------------------------------------------------------------- verdicts
def _runs(mean: float, sd: float, seed: int, groups: int = 2, per: int = 3) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [list(rng.normal(mean, sd, per)) for _ in range(groups)]


def test_each_outcome_is_reached_on_synthetic_measurements():
    kw = dict(seed=0, resamples=2000)
    # expected: the larger model's text share rises (+1), paper-sized effect 0.2
    clear = mean_interval(_runs(0.30, 0.03, 1), **kw)
    assert verdict(clear, direction=1, effect=0.2).verdict == HOLDS
    none = mean_interval(_runs(0.0, 0.02, 2), **kw)  # no effect, tightly measured
    out = verdict(none, direction=1, effect=0.2)
    assert out.verdict == NOT_HOLDS and "excludes the effect 0.2" in out.reason
    noisy = mean_interval(_runs(0.1, 0.4, 3), **kw)
    assert verdict(noisy, direction=1, effect=0.2).verdict == INCONCLUSIVE
    out = verdict(clear, direction=1, effect=0.2, failed=["formats 12 points apart before RL (need <= 5)"])
    assert out.verdict == NOT_TESTABLE and "12 points apart" in out.reason
    assert verdict(None, direction=1).verdict == NOT_TESTABLE


def test_a_wrong_direction_effect_never_holds():
    kw = dict(seed=0, resamples=1000)
    # a clear fall where a rise was expected: with effect 0 it does not hold; never "holds"
    fall = mean_interval(_runs(-0.3, 0.03, 4), **kw)
    assert verdict(fall, direction=1).verdict == NOT_HOLDS
    assert verdict(fall, direction=-1).verdict == HOLDS  # the same data, expected to fall
    # over many random designs, "holds" implies the estimate lies on the expected side
    rng = np.random.default_rng(9)
    for i in range(200):
        direction = int(rng.choice([-1, 1]))
        iv = mean_interval(_runs(rng.normal(0, 0.2), rng.uniform(0.01, 0.5), i), **kw)
        out = verdict(iv, direction=direction, null=0.0, effect=0.1)
        if direction * iv.estimate <= 0:
            assert out.verdict != HOLDS
        if out.verdict == HOLDS:
            assert direction * iv.lo > 0 or direction * iv.hi > 0
    # a hand-made interval whose estimate disagrees with it is not "holds" either
    assert verdict(Interval(-0.1, 0.1, 0.3), direction=1).verdict != HOLDS


def test_null_other_than_zero_and_a_negative_direction():
    # F1: the mean |gain step - collapse step| / steps is expected below the window 0.25
    inside = mean_interval([[0.05, 0.1, 0.0], [0.08, 0.02, 0.1]], seed=0, resamples=2000)
    assert verdict(inside, direction=-1, null=0.25).verdict == HOLDS
    outside = mean_interval([[0.5, 0.6, 0.55], [0.45, 0.6, 0.5]], seed=0, resamples=2000)
    assert verdict(outside, direction=-1, null=0.25).verdict == NOT_HOLDS
    straddle = mean_interval([[0.0, 0.6, 0.1], [0.5, 0.05, 0.3]], seed=0, resamples=2000)
    assert verdict(straddle, direction=-1, null=0.25).verdict == INCONCLUSIVE


def test_an_effect_smaller_than_the_minimal_one_still_holds_by_direction_and_says_so():
    small = mean_interval([[0.05, 0.051, 0.049]] * 2, seed=0, resamples=1000)
    out = verdict(small, direction=1, effect=0.2)
    assert out.verdict == HOLDS and "smaller than the minimal effect" in out.reason
