"""Shared statistics: Wilson intervals and ties between proportions and counts."""
from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------- uncertainty


Z95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(k, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval (lower, upper) of a proportion k/n; arrays broadcast. n = 0 gives (0, 1).

    Unlike p +- z*sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at k = 0 or k = n.
    """
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    safe_n = np.where(n > 0, n, 1.0)
    p = k / safe_n
    denom = 1 + z ** 2 / safe_n
    centre = (p + z ** 2 / (2 * safe_n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / safe_n + z ** 2 / (4 * safe_n ** 2))
    low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    return np.where(n > 0, low, 0.0), np.where(n > 0, high, 1.0)


def proportions_tie(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> bool:
    """Whether two proportions from independent samples (e.g. the recalls of two classes) are within noise:
    their difference is within z standard errors of the difference (normal approximation)."""
    if n1 == 0 or n2 == 0:
        return True
    p1, p2 = k1 / n1, k2 / n2
    se = np.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return bool(abs(p1 - p2) <= z * se)


def counts_tie(k1: int, k2: int, z: float = Z95) -> bool:
    """Whether two counts from the same faces (two confusions of one true class) are within noise.

    Among the k1 + k2 faces that went to either class, equal rates mean each went to the first with probability
    1/2; the counts tie when the Wilson interval of k1 / (k1 + k2) contains 1/2.
    """
    if k1 + k2 == 0:
        return True
    low, high = wilson_interval(k1, k1 + k2, z)
    return bool(low <= 0.5 <= high)



def wilson_overlap(k1, n1, k2, n2, z: float = Z95) -> bool:
    """Whether the 95% Wilson intervals of k1/n1 and k2/n2 overlap: the pages' rule for calling two rates a tie."""
    low1, high1 = wilson_interval(k1, n1, z)
    low2, high2 = wilson_interval(k2, n2, z)
    return bool(low1 <= high2 and low2 <= high1)


def bootstrap_interval(statistic, n: int, resamples: int = 1000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap interval (low, high) of ``statistic(indices)`` over ``n`` items resampled with
    replacement; the statistic may return an array (intervals elementwise)."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)])
    tail = (1 - level) / 2 * 100
    return np.percentile(values, tail, axis=0), np.percentile(values, 100 - tail, axis=0)
