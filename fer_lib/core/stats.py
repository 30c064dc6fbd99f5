"""Shared statistics: Wilson intervals and ties between proportions."""
from __future__ import annotations

import numpy as np

Z95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(k, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval (lower, upper) of a proportion k/n; arrays broadcast; n = 0 gives (0, 1).
    Unlike p +- z*sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at k = 0 or k = n."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    safe_n = np.where(n > 0, n, 1.0)
    p, denom = k / safe_n, 1 + z ** 2 / safe_n
    centre = (p + z ** 2 / (2 * safe_n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / safe_n + z ** 2 / (4 * safe_n ** 2))
    return np.where(n > 0, np.clip(centre - half, 0, 1), 0.0), np.where(n > 0, np.clip(centre + half, 0, 1), 1.0)


def proportions_tie(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> bool:
    """Whether two proportions from independent samples (e.g. the recalls of two classes) are within noise: the
    two-proportion z-test at 5%, its standard error from the pooled proportion (so that 3/3 against 1/3 is not
    called a difference because 3/3 alone has no spread)."""
    if n1 == 0 or n2 == 0:
        return True
    pooled = (k1 + k2) / (n1 + n2)
    return bool(abs(k1 / n1 - k2 / n2) <= z * np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2)))
