"""Statistics for the privacy audit, in plain Python (no scipy inside the sandbox).

Convention: a higher score means "more likely a member" everywhere in this module.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """Area under the ROC curve = P(member score > non-member score), ties counting half."""
    u = _mann_whitney_u(members, nonmembers)
    return u / (len(members) * len(nonmembers))


def auc_p_value(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """One-sided p-value of AUC > 0.5 (Mann-Whitney U, normal approximation with tie correction).

    One-sided because the audit asks whether the model favours its members; an AUC below 0.5
    is no evidence of leakage.
    """
    n1, n2 = len(members), len(nonmembers)
    u = _mann_whitney_u(members, nonmembers)
    mean = n1 * n2 / 2
    ties = _tie_term(list(members) + list(nonmembers))
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return 1.0 if u <= mean else 0.0
    z = (u - mean - 0.5) / math.sqrt(variance)  # continuity correction
    return normal_sf(z)


def bootstrap_auc_ci(
    members: Sequence[float], nonmembers: Sequence[float], *, seed: int, resamples: int = 200, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling each group with replacement."""
    rng = random.Random(f"bootstrap:{seed}")
    values = sorted(
        auc(rng.choices(members, k=len(members)), rng.choices(nonmembers, k=len(nonmembers)))
        for _ in range(resamples)
    )
    tail = (1 - level) / 2
    return _quantile(values, tail), _quantile(values, 1 - tail)


def tpr_at_fpr(members: Sequence[float], nonmembers: Sequence[float], fpr: float) -> tuple[float, int]:
    """TPR at the strictest threshold whose FPR is at most ``fpr``; also the member hit count.

    With n non-members, at most floor(fpr * n) of them may score above the threshold; below 100
    non-members a 1% FPR therefore allows none, which is the honest reading of a small holdout.
    """
    allowed = math.floor(fpr * len(nonmembers) + 1e-9)
    ranked = sorted(nonmembers, reverse=True)
    threshold = ranked[allowed] if allowed < len(ranked) else -math.inf
    hits = sum(1 for s in members if s > threshold)
    return hits / len(members), hits


def roc_points(members: Sequence[float], nonmembers: Sequence[float], *, max_points: int = 50) -> list[list[float]]:
    """At most ``max_points`` [fpr, tpr] pairs from (0, 0) to (1, 1), evenly spread over thresholds."""
    scored = sorted([(s, 1) for s in members] + [(s, 0) for s in nonmembers], key=lambda p: -p[0])
    points = [[0.0, 0.0]]
    tp = fp = 0
    i = 0
    while i < len(scored):
        score = scored[i][0]
        while i < len(scored) and scored[i][0] == score:  # one point per distinct threshold
            tp += scored[i][1]
            fp += 1 - scored[i][1]
            i += 1
        points.append([fp / len(nonmembers), tp / len(members)])
    if len(points) > max_points:
        step = (len(points) - 1) / (max_points - 1)
        points = [points[round(k * step)] for k in range(max_points)]
    return [[round(f, 6), round(t, 6)] for f, t in points]


def clopper_pearson_lower(successes: int, trials: int, *, confidence: float = 0.95) -> float:
    """One-sided exact lower confidence bound of a binomial proportion.

    Solves P(X >= successes | p) = 1 - confidence for p by bisection on the binomial tail.
    """
    if trials <= 0 or successes <= 0:
        return 0.0
    alpha = 1 - confidence
    low, high = 0.0, successes / trials
    for _ in range(60):
        mid = (low + high) / 2
        if binomial_sf(successes, trials, mid) < alpha:
            low = mid
        else:
            high = mid
    return low


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space to stay stable for large n."""
    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    peak = max(terms)
    return min(1.0, math.exp(peak) * sum(math.exp(t - peak) for t in terms))


def two_proportion_p_value(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """One-sided p-value that proportion a exceeds proportion b (pooled z-test)."""
    if n_a == 0 or n_b == 0:
        return 1.0
    pooled = (hits_a + hits_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0:  # both all-zero or both all-one: no evidence of a difference
        return 1.0
    return normal_sf((hits_a / n_a - hits_b / n_b) / math.sqrt(variance))


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal; erfc keeps precision far into the tail."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / length of the longer string (1.0 for two empty strings)."""
    if not a and not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1 - previous[-1] / max(len(a), len(b))


def _mann_whitney_u(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """U statistic of the members (number of member > non-member pairs, ties half) via ranks."""
    if not members or not nonmembers:
        raise ValueError("both groups need at least one score")
    ranks = _average_ranks(list(members) + list(nonmembers))
    member_rank_sum = sum(ranks[: len(members)])
    return member_rank_sum - len(members) * (len(members) + 1) / 2


def _average_ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _tie_term(values: list[float]) -> float:
    counts: dict[float, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sum(t**3 - t for t in counts.values())


def _quantile(sorted_values: list[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)
