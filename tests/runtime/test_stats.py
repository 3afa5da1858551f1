"""The audit's statistics (plain Python, no scipy in the sandbox)."""

from __future__ import annotations

import math
import random

import pytest

from training.runtime import stats


def test_auc_perfect_separation_is_one():
    assert stats.auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert stats.auc([0, 1, 2], [3, 4, 5]) == 0.0


def test_auc_ties_count_half():
    assert stats.auc([1, 1], [1, 1, 1]) == 0.5


def test_auc_matches_pairwise_count():
    rng = random.Random(0)
    members = [rng.gauss(0.3, 1) for _ in range(40)]
    nonmembers = [rng.gauss(0, 1) for _ in range(50)]
    pairs = sum((m > n) + 0.5 * (m == n) for m in members for n in nonmembers)
    assert stats.auc(members, nonmembers) == pytest.approx(pairs / (40 * 50))


def test_auc_p_value_small_when_separated_and_large_when_not():
    assert stats.auc_p_value(list(range(50, 100)), list(range(0, 50))) < 1e-10
    rng = random.Random(1)
    same = [rng.random() for _ in range(200)]
    assert stats.auc_p_value(same[:100], same[100:]) > 0.01
    assert stats.auc_p_value(list(range(0, 50)), list(range(50, 100))) > 0.99  # one-sided


def test_bootstrap_ci_contains_auc_and_is_seeded():
    rng = random.Random(2)
    members = [rng.gauss(0.5, 1) for _ in range(60)]
    nonmembers = [rng.gauss(0, 1) for _ in range(60)]
    low, high = stats.bootstrap_auc_ci(members, nonmembers, seed=7)
    assert low < stats.auc(members, nonmembers) < high
    assert (low, high) == stats.bootstrap_auc_ci(members, nonmembers, seed=7)


def test_tpr_at_fpr_allows_only_floor_of_nonmembers_above_threshold():
    nonmembers = list(range(100))  # scores 0..99
    members = [99.5, 98.5, 50]
    # 1% of 100 non-members = 1 may exceed: threshold is the second-highest (98).
    assert stats.tpr_at_fpr(members, nonmembers, 0.01) == (2 / 3, 2)
    # 0.1% of 100 = 0 may exceed: threshold is the highest (99).
    assert stats.tpr_at_fpr(members, nonmembers, 0.001) == (1 / 3, 1)


def test_roc_points_are_capped_monotone_and_span_the_square():
    rng = random.Random(3)
    members = [rng.random() + 0.2 for _ in range(300)]
    nonmembers = [rng.random() for _ in range(300)]
    points = stats.roc_points(members, nonmembers, max_points=50)
    assert len(points) <= 50
    assert points[0] == [0.0, 0.0] and points[-1] == [1.0, 1.0]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(points, points[1:]))


def test_clopper_pearson_lower_matches_closed_forms():
    # x = n: lower bound solves p^n = alpha.
    assert stats.clopper_pearson_lower(10, 10) == pytest.approx(0.05 ** (1 / 10), abs=1e-9)
    # x = 1: solves 1 - (1 - p)^n = alpha.
    assert stats.clopper_pearson_lower(1, 20) == pytest.approx(1 - 0.95 ** (1 / 20), abs=1e-9)
    assert stats.clopper_pearson_lower(0, 20) == 0.0


def test_binomial_sf_sums_to_one_at_zero():
    assert stats.binomial_sf(0, 10, 0.3) == 1.0
    assert stats.binomial_sf(1, 10, 0.3) == pytest.approx(1 - 0.7**10)


def test_two_proportion_p_value_one_sided():
    assert stats.two_proportion_p_value(30, 50, 5, 50) < 1e-6
    assert stats.two_proportion_p_value(5, 50, 30, 50) > 0.99
    assert stats.two_proportion_p_value(0, 50, 0, 50) == 1.0


def test_edit_similarity():
    assert stats.edit_similarity("abcdefghij", "abcdefghij") == 1.0
    assert stats.edit_similarity("abcdefghij", "abcdefghiX") == pytest.approx(0.9)
    assert stats.edit_similarity("", "") == 1.0
    assert stats.edit_similarity("abc", "") == 0.0


def test_normal_tails_stay_precise():
    assert stats.normal_sf(0) == 0.5
    assert stats.normal_cdf(-1.959963985) == pytest.approx(0.025, rel=1e-6)
    assert 0 < stats.normal_cdf(-30) < 1e-190
    assert math.isfinite(-math.log2(stats.normal_cdf(-30)))
