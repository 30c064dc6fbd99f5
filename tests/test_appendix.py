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


def test_own_copies_count_groups_conflicts_and_score_one_face_of_each():
    from fer_lib.questions.appendix import own_copies

    faces = np.random.default_rng(0).integers(0, 256, (8, 48, 48)).astype(np.uint8)
    faces[[3, 4]], faces[5] = faces[0], faces[1]  # face 0 thrice, face 1 twice
    labels = np.array([2, 4, 0, 2, 2, 5, 6, 3])  # face 1's copy disagrees: one conflicting group
    right = np.array([1, 1, 0, 1, 1, 0, 0, 1], bool)
    o = own_copies(faces, labels, right)
    assert (o["exact_groups"], o["exact_extra_copies"], o["exact_groups_with_conflicting_labels"]) == (2, 3, 1)
    assert o["accuracy"] == pytest.approx(5 / 8) and o["one_each"] == pytest.approx(3 / 5)  # faces 0, 1, 2, 6, 7
