"""Bootstrap intervals and paired differences against hand-checked cases."""

import math

import pytest

from switchkd.evaluation.stats import Difference, above_chance, accuracy_interval, paired_difference, sign_test


def test_identical_models_differ_by_exactly_nothing():
    a = [1, 0, 1, 1, 0] * 20
    d = paired_difference([(a, a), (a, a)])
    assert (d.mean, d.low, d.high, d.per_seed) == (0.0, 0.0, 0.0, (0.0, 0.0))
    assert not d.distinguishable and d.verdict() == "not distinguishable from noise"


def test_always_right_against_always_wrong_is_100_points_with_no_spread():
    d = paired_difference([([1] * 30, [0] * 30)])
    assert (d.mean, d.low, d.high) == (100.0, 100.0, 100.0)
    assert d.verdict() == "better" and d.cell() == "+100.0 [+100.0, +100.0] (+100.0)"
    assert paired_difference([([0] * 30, [1] * 30)]).verdict() == "worse"


def test_one_win_in_four_questions_is_not_evidence():
    # a - b = (1, 0, 0, 0): +25 points, but a resample misses the one win with probability (3/4)^4 = 32 %,
    # so the 2.5th percentile is 0 and the interval does not exclude it.
    d = paired_difference([([1, 0, 0, 0], [0, 0, 0, 0])])
    assert d.mean == 25.0 and d.low == 0.0 and d.high == pytest.approx(75.0)
    assert not d.distinguishable


def test_seeds_that_disagree_in_sign_are_not_distinguishable_even_with_a_narrow_interval():
    seed0 = ([1] * 100, [0] * 100)  # +100
    seed1 = ([0] * 100, [1] * 10 + [0] * 90)  # -10
    d = paired_difference([seed0, seed1])
    assert d.per_seed == (100.0, -10.0) and d.mean == 45.0
    assert d.low > 0  # questions alone cannot explain the mean ...
    assert not d.distinguishable  # ... but a seed went the other way
    assert d.std == pytest.approx(math.sqrt(2) * 55.0)


def test_interval_width_matches_the_normal_approximation():
    # 400 questions at 50 %: standard error 2.5 points, so the 95 % interval is about 50 +- 4.9.
    low, high = accuracy_interval([[1, 0] * 200])
    assert low == pytest.approx(45.1, abs=0.8) and high == pytest.approx(54.9, abs=0.8)
    # Three seeds of the same: the mean over seeds has sqrt(3) times less question noise.
    low3, high3 = accuracy_interval([[1, 0] * 200] * 3)
    assert (high3 - low3) == pytest.approx((high - low) / math.sqrt(3), rel=0.1)
    assert accuracy_interval([[1] * 10]) == (100.0, 100.0)


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="seed 1: 3 answers for a but 2 for b"):
        paired_difference([([1], [0]), ([1, 1, 0], [0, 1])])
    with pytest.raises(ValueError, match="non-empty"):
        accuracy_interval([[]])
    with pytest.raises(ValueError, match="at least one"):
        paired_difference([])


def test_a_difference_reads_as_one_cell():
    d = Difference((2.0, 4.0), 3.0, 0.5, 5.5, sign_p=0.01)
    assert d.cell() == "+3.0 [+0.5, +5.5] (+2.0 / +4.0)" and d.verdict() == "better"
    assert d.std == pytest.approx(math.sqrt(2))


def test_a_few_discordant_questions_are_not_enough_whatever_the_bootstrap_says():
    # two seeds, two questions each where a wins and b loses: the bootstrap interval is above 0, but
    # 4 of 4 discordant pairs happen by chance with p = 2 / 2^4 = 0.125
    seed = ([1, 1] + [0] * 98, [0] * 100)
    d = paired_difference([seed, seed])
    assert d.low > 0 and d.per_seed == (2.0, 2.0)
    assert d.sign_p == 0.125 and not d.distinguishable
    # 6 of 6: p = 2 / 64 = 0.031
    seed = ([1, 1, 1] + [0] * 97, [0] * 100)
    assert paired_difference([seed, seed]).sign_p == pytest.approx(0.03125)


@pytest.mark.parametrize(
    "wins, losses, p",
    [(0, 0, 1.0), (1, 0, 1.0), (5, 5, 1.0), (10, 0, 2 / 1024), (8, 2, 2 * 56 / 1024), (2, 8, 2 * 56 / 1024)],
)
def test_sign_test_hand_computed(wins, losses, p):
    # (8, 2): P(X <= 2) for Bin(10, 1/2) = (1 + 10 + 45) / 1024
    assert sign_test(wins, losses) == pytest.approx(p)


@pytest.mark.parametrize(
    "hits, n, chance, p",
    [
        (0, 5, 0.3, 1.0),
        (3, 3, 0.5, 1 / 8),
        (2, 3, 0.5, 4 / 8),  # 3 of 3 or 2 of 3: (1 + 3) / 8
        (2, 4, 0.25, (6 * 9 + 4 * 3 + 1) / 256),  # C(4,2) .25^2 .75^2 + C(4,3) .25^3 .75 + .25^4
        (0, 0, 0.5, 1.0),
        (1, 1, 0.0, 0.0),
    ],
)
def test_above_chance_hand_computed(hits, n, chance, p):
    assert above_chance(hits, n, chance) == pytest.approx(p)


@pytest.mark.parametrize("hits, n, chance", [(700, 1080, 0.29), (330, 1080, 0.29), (5400, 9000, 0.5), (4, 7, 1.0)])
def test_above_chance_at_pooled_sizes_equals_exact_arithmetic(hits, n, chance):
    """Three seeds pool about a thousand questions a kind: C(1080, 540) alone overflows a float. The
    p-value against the same sum in exact fractions (``switchkd reproduce``'s report once died here)."""
    from fractions import Fraction

    p = Fraction(chance)
    exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(hits, n + 1))
    assert above_chance(hits, n, chance) == pytest.approx(float(exact), rel=1e-9, abs=1e-300)


def test_above_chance_refuses_a_probability_outside_0_1():
    with pytest.raises(ValueError, match="chance must lie in"):
        above_chance(1, 2, 1.5)
