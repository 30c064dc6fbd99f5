"""Labelled test sets are scored: accuracy with its interval, per Kaggle Usage, and on faces without a training copy."""
from __future__ import annotations

import numpy as np
import pytest

from fer_lib.core.stats import wilson_interval
from fer_lib.training.finish import score_test_set as score


def test_scores_by_usage_and_without_training_copy():
    labels = np.array([0, 1, 2, 3, 3, 3, 4, 5])
    predicted = np.array([0, 1, 2, 3, 0, 0, 4, 6])
    usage = np.array(["PublicTest"] * 4 + ["PrivateTest"] * 4)
    copy = np.array([True, True, False, False, False, False, True, False])
    scores = score(labels, predicted, usage, copy)
    assert scores["faces"] == 8 and scores["accuracy"] == pytest.approx(5 / 8)
    assert (scores["low"], scores["high"]) == pytest.approx(tuple(map(float, wilson_interval(5, 8))))
    assert scores["by_usage"] == {"PrivateTest": pytest.approx(1 / 4), "PublicTest": pytest.approx(1.0)}
    assert scores["usage_faces"] == {"PrivateTest": 4, "PublicTest": 4}
    assert scores["faces_without_copy"] == 5 and scores["without_training_copy"] == pytest.approx(2 / 5)
    confusion = np.array(scores["confusion"])
    assert confusion.shape == (7, 7) and confusion.sum() == 8 and confusion[3, 0] == 2 and np.trace(confusion) == 5


def test_without_usage_or_copies_the_score_leaves_them_out():
    scores = score(np.array([1, 2]), np.array([1, 1]))
    assert {k: scores[k] for k in ("faces", "accuracy")} == {"faces": 2, "accuracy": 0.5}
    assert not {"by_usage", "without_training_copy", "faces_without_copy"} & set(scores)
    with pytest.raises(ValueError):
        score(np.array([1, 2]), np.array([1]))
