"""Shared statistics: Wilson intervals and ties."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from fer_lib.core.stats import proportions_tie, wilson_interval

# --------------------------------------------------------------------------------------------- intervals


def wilson_by_hand(k, n, z=1.959964):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_interval_matches_the_formula_on_known_cases():
    low, high = wilson_interval(0, 10)
    assert float(low) == 0.0 and float(high) == pytest.approx(3.8415 / 13.8415, abs=1e-4)  # z^2 / (n + z^2)
    low, high = wilson_interval(5, 10)
    assert (float(low), float(high)) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert (float(low), float(high)) == pytest.approx(wilson_by_hand(5, 10))
    low, high = wilson_interval(10, 10)
    assert float(high) == pytest.approx(1.0) and float(low) == pytest.approx(1 - 3.8415 / 13.8415, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_agrees_with_scipy_and_broadcasts():
    from scipy.stats import binomtest

    k, n = np.array([1, 7, 33, 60, 480]), np.array([3, 40, 50, 512, 500])
    low, high = wilson_interval(k, n)
    for i in range(len(k)):
        ci = binomtest(int(k[i]), int(n[i])).proportion_ci(method="wilson")
        assert (low[i], high[i]) == pytest.approx((ci.low, ci.high), abs=1e-6)


def test_ties_between_proportions():
    assert proportions_tie(60, 380, 58, 380)  # the seed's "Fear mostly as Sad": 60 vs 58 of 380 faces is noise
    assert not proportions_tie(60, 380, 30, 380)
    assert proportions_tie(40, 100, 45, 100) and not proportions_tie(90, 100, 50, 100)
    assert proportions_tie(3, 3, 1, 3)  # the pooled error: 3/3 alone has no spread, yet 3 faces prove nothing
    assert proportions_tie(0, 0, 5, 10)  # no faces: nothing to tell apart


