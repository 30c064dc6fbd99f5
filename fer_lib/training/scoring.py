"""The test set scored, where its labels are known (Kaggle's fer2013.csv, class folders, the synthetic set).

Nothing here runs when the labels are hidden (the homework's test.csv): then the report writes predictions only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fer_lib import NUM_CLASSES
from fer_lib.core.stats import wilson_interval


@dataclass(frozen=True)
class ScoredTestSet:
    faces: int
    accuracy: float
    low: float  # Wilson 95% interval of the accuracy
    high: float
    confusion: np.ndarray  # (7, 7) counts: rows true, columns predicted
    by_usage: dict[str, float] = field(default_factory=dict)  # Kaggle's PublicTest / PrivateTest, where named
    usage_faces: dict[str, int] = field(default_factory=dict)
    without_training_copy: float | None = None  # accuracy on test faces with no copy (exact or near) in training
    faces_without_copy: int = 0

    def as_metrics(self) -> dict:
        """The ``"test"`` entry of metrics.json."""
        entry = {"faces": self.faces, "accuracy": self.accuracy}
        if self.by_usage:
            entry["by_usage"] = dict(self.by_usage)
        if self.without_training_copy is not None:
            entry["without_training_copy"] = self.without_training_copy
        return entry


def score_test_set(labels: np.ndarray, predicted: np.ndarray, usage: np.ndarray | None = None,
                   has_training_copy: np.ndarray | None = None) -> ScoredTestSet:
    """Accuracy (with its interval), the confusion matrix, accuracy per Usage and on faces without a training copy."""
    from sklearn.metrics import confusion_matrix

    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if len(labels) != len(predicted):
        raise ValueError(f"{len(labels)} labels for {len(predicted)} predictions")
    correct = labels == predicted
    low, high = wilson_interval(int(correct.sum()), len(correct))
    by_usage, usage_faces = {}, {}
    for name in [] if usage is None else sorted(set(np.asarray(usage).tolist())):
        chosen = np.asarray(usage) == name
        by_usage[name], usage_faces[name] = float(correct[chosen].mean()), int(chosen.sum())
    unseen = None if has_training_copy is None else ~np.asarray(has_training_copy, dtype=bool)
    return ScoredTestSet(faces=len(labels), accuracy=float(correct.mean()) if len(labels) else 0.0, low=float(low),
                         high=float(high), confusion=confusion_matrix(labels, predicted, labels=range(NUM_CLASSES)),
                         by_usage=by_usage, usage_faces=usage_faces,
                         without_training_copy=float(correct[unseen].mean()) if unseen is not None and unseen.any()
                         else None, faces_without_copy=0 if unseen is None else int(unseen.sum()))
