"""Shared statistics: Wilson intervals, ties between proportions, AUROC by ranks, percentile intervals."""
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
    """Whether two proportions from independent samples (e.g. the recalls of two classes) are within noise: the
    two-proportion z-test at 5%, its standard error from the pooled proportion (so that 3/3 against 1/3 is not
    called a difference because 3/3 alone has no spread)."""
    if n1 == 0 or n2 == 0:
        return True
    pooled = (k1 + k2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return bool(abs(k1 / n1 - k2 / n2) <= z * se)


def rank_auroc(scores, positive) -> np.ndarray:
    """AUROC per column of ``scores`` (N, F) for the bool labels ``positive`` (N,) or (N, F), from ranks (ties
    share the mean rank): the chance that a random positive scores above a random negative, ties counting half.
    Equal to ``sklearn.metrics.roc_auc_score`` column by column, for all columns at once; NaN without both kinds."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    scores = scores[:, None] if scores.ndim == 1 else scores
    positive = np.broadcast_to(np.asarray(positive, bool).reshape(len(scores), -1), scores.shape)
    n1 = positive.sum(0).astype(float)
    n0 = len(scores) - n1
    ranks = rankdata(scores, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * positive).sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def auroc_se(auc, n1, n0) -> np.ndarray:
    """Hanley and McNeil's (1982) standard error of an AUROC from n1 positives and n0 negatives (arrays
    broadcast): a cheap normal-approximation interval where a bootstrap per value would cost too much."""
    auc, n1, n0 = (np.asarray(v, dtype=float) for v in (auc, n1, n0))
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    return np.sqrt((auc * (1 - auc) + (n1 - 1) * (q1 - auc ** 2) + (n0 - 1) * (q2 - auc ** 2)) / (n1 * n0))


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of bootstrap ``samples`` along axis 0; NaN samples are left out (a column that is
    NaN in every resample stays NaN)."""
    import warnings

    tail = (1 - level) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(samples, tail, axis=0), np.nanpercentile(samples, 100 - tail, axis=0)
