"""Calibrated probabilities: temperature scaling fitted on validation, and the "uncertain" threshold.

A network trained with cross-entropy is usually over-confident; dividing its logits by one temperature T,
fitted to minimise the validation negative log-likelihood, fixes most of that without changing a single
prediction (Guo et al., 2017). A run's calibration lives in ``calibration.json`` beside its weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fer_lib.core.io import atomic_write

CALIBRATION_FILE = "calibration.json"
THRESHOLDS = np.round(np.arange(0.30, 0.801, 0.05), 2)  # candidate "uncertain" thresholds on the top probability


def fit_temperature(logits: torch.Tensor, labels) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T), searched in [0.1, 20]."""
    from scipy.optimize import minimize_scalar

    logits = torch.as_tensor(logits, dtype=torch.float32)
    labels = torch.as_tensor(labels, dtype=torch.long)
    found = minimize_scalar(lambda t: F.cross_entropy(logits / t, labels).item(), bounds=(0.1, 20.0),
                            method="bounded", options={"xatol": 1e-5})
    return float(found.x)


def uncertain_threshold(probs: np.ndarray, labels) -> float:
    """The largest candidate threshold t such that faces whose top probability is below t are right less often
    than wrong: below it a prediction is more likely a mistake than not, which is what "uncertain" tells a user."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    top, correct = probs.max(1), probs.argmax(1) == labels
    chosen = float(THRESHOLDS[0])
    for t in THRESHOLDS:
        below = top < t
        if below.sum() >= 20 and correct[below].mean() < 0.5:
            chosen = float(t)
    return chosen


ECE_BINS = 15  # equal-width bins of the top probability, for the ECE and the reliability diagram alike


def reliability_table(probs: np.ndarray, labels, bins: int = ECE_BINS):
    """Per equal-width bin of the top probability: faces, mean confidence and accuracy (empty bins left out).

    The one binning of this project: ``expected_calibration_error`` is computed from this table.
    """
    import pandas as pd

    probs, labels = np.asarray(probs), np.asarray(labels)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    rows = [{"low": edges[b], "high": edges[b + 1], "faces": int((which == b).sum()),
             "confidence": float(conf[which == b].mean()), "accuracy": float(correct[which == b].mean())}
            for b in range(bins) if (which == b).any()]
    return pd.DataFrame(rows, columns=["low", "high", "faces", "confidence", "accuracy"])


def expected_calibration_error(probs: np.ndarray, labels, bins: int = ECE_BINS) -> float:
    """ECE: the face-weighted mean |accuracy - confidence| over the bins of ``reliability_table``."""
    table = reliability_table(probs, labels, bins)
    if not len(table):
        return 0.0
    return float((table["faces"] * (table["accuracy"] - table["confidence"]).abs()).sum() / table["faces"].sum())


def calibrate(logits: torch.Tensor, labels) -> dict:
    """Temperature, uncertain threshold and ECE before / after, from validation logits and labels."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    t = fit_temperature(logits, labels)
    before = torch.softmax(logits, 1).numpy()
    after = torch.softmax(logits / t, 1).numpy()
    return {"temperature": t, "uncertain_below": uncertain_threshold(after, labels),
            "ece_before": expected_calibration_error(before, labels),
            "ece_after": expected_calibration_error(after, labels), "faces": int(len(after))}


def write_calibration(run_dir: Path, calibration: dict) -> None:
    atomic_write(Path(run_dir) / CALIBRATION_FILE, lambda tmp: tmp.write_text(json.dumps(calibration, indent=2)))


def read_calibration(run_dir: Path) -> dict | None:
    """A run's calibration, or None when it has none (then probabilities are the model's raw softmax)."""
    try:
        return json.loads((Path(run_dir) / CALIBRATION_FILE).read_text())
    except (OSError, ValueError):
        return None
