"""Labelled test sets are scored: accuracy with its interval, per Kaggle Usage, and on faces without a training copy."""
from __future__ import annotations

import numpy as np
import pytest

from fer_lib.training.scoring import score_test_set


def test_scores_by_usage_and_without_training_copy():
    labels = np.array([0, 1, 2, 3, 3, 3, 4, 5])
    predicted = np.array([0, 1, 2, 3, 0, 0, 4, 6])
    usage = np.array(["PublicTest"] * 4 + ["PrivateTest"] * 4)
    copy = np.array([True, True, False, False, False, False, True, False])
    scores = score_test_set(labels, predicted, usage, copy)
    assert scores.faces == 8 and scores.accuracy == pytest.approx(5 / 8)
    assert scores.low < 5 / 8 < scores.high
    assert scores.by_usage == {"PrivateTest": pytest.approx(1 / 4), "PublicTest": pytest.approx(1.0)}
    assert scores.usage_faces == {"PrivateTest": 4, "PublicTest": 4}
    assert scores.faces_without_copy == 5 and scores.without_training_copy == pytest.approx(2 / 5)
    assert scores.confusion.sum() == 8 and scores.confusion[3, 0] == 2 and np.trace(scores.confusion) == 5
    assert scores.as_metrics() == {"faces": 8, "accuracy": pytest.approx(5 / 8),
                                   "by_usage": {"PrivateTest": pytest.approx(0.25), "PublicTest": pytest.approx(1.0)},
                                   "without_training_copy": pytest.approx(0.4)}


def test_without_usage_the_metrics_leave_it_out():
    scores = score_test_set(np.array([1, 2]), np.array([1, 1]))
    assert scores.as_metrics() == {"faces": 2, "accuracy": 0.5}
    with pytest.raises(ValueError):
        score_test_set(np.array([1, 2]), np.array([1]))
