import numpy as np
import pytest

from fer_lib.questions.appendix import paired_gain


def test_the_paired_gain_is_narrower_than_two_independent_accuracies():
    rng = np.random.default_rng(0)
    without = rng.random(3000) < 0.66
    with_ = without.copy()
    with_[np.flatnonzero(~without)[:105]] = True  # 150 faces change: 105 become right, 45 become wrong
    with_[np.flatnonzero(without)[:45]] = False
    g = paired_gain(without, with_)
    assert g.gain == pytest.approx((with_.mean() - without.mean()))
    assert (g.only_with, g.only_without, g.faces) == (105, 45, 3000) and g.gain == pytest.approx(60 / 3000)
    assert g.low < g.gain < g.high and not g.tie
    independent_se = (2 * 0.66 * 0.34 / 3000) ** 0.5
    assert (g.high - g.low) / 2 < 1.96 * independent_se * 0.7, "pairing removes the shared noise"


def test_no_change_is_a_tie():
    rng = np.random.default_rng(1)
    right = rng.random(500) < 0.6
    swapped = right.copy()
    swapped[np.flatnonzero(right)[:5]] = False
    swapped[np.flatnonzero(~right)[:5]] = True
    g = paired_gain(right, swapped)
    assert g.gain == 0 and g.tie and g.only_with == g.only_without == 5
    with pytest.raises(ValueError):
        paired_gain(np.array([], bool), np.array([], bool))
