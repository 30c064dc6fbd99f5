"""Calibrated probabilities: one temperature dividing the logits, fitted on validation, undoes most of a network's
over-confidence without changing a prediction (Guo et al., 2017); and the "uncertain" threshold. A run's
calibration lives in ``calibration.json`` beside its weights."""
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

    logits, labels = torch.as_tensor(logits, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long)
    found = minimize_scalar(lambda t: F.cross_entropy(logits / t, labels).item(), bounds=(0.1, 20.0),
                            method="bounded", options={"xatol": 1e-5})
    return float(found.x)


def uncertain_threshold(probs: np.ndarray, labels) -> float:
    """The largest candidate threshold t such that faces whose top probability is below t (at least 20) are right
    less often than wrong: below it a prediction is more likely a mistake than not, what "uncertain" tells a user."""
    top, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
    below = top[None, :] < THRESHOLDS[:, None]  # (thresholds, faces)
    faces, right = below.sum(1), (below & correct).sum(1)
    chosen = THRESHOLDS[(faces >= 20) & (2 * right < faces)]
    return float(chosen.max() if len(chosen) else THRESHOLDS[0])


ECE_BINS = 15  # equal-width bins of the top probability, for the ECE and the reliability diagram alike


def reliability_table(probs: np.ndarray, labels, bins: int = ECE_BINS):
    """Per equal-width bin of the top probability: faces, mean confidence and accuracy (empty bins left out); the
    one binning of this project (sklearn's calibration_curve), which the ECE is computed from."""
    import pandas as pd
    from sklearn.calibration import calibration_curve

    conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
    accuracy, confidence = calibration_curve(correct.astype(int), conf, n_bins=bins)
    edges = np.linspace(0, 1, bins + 1)
    faces = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=bins)  # calibration_curve's bins
    used = faces > 0
    return pd.DataFrame({"low": edges[:-1][used], "high": edges[1:][used], "faces": faces[used],
                         "confidence": confidence, "accuracy": accuracy})


def expected_calibration_error(probs: np.ndarray, labels, bins: int = ECE_BINS) -> float:
    """ECE: the face-weighted mean |accuracy - confidence| over the bins of ``reliability_table``."""
    table = reliability_table(probs, labels, bins)
    return float((table["faces"] * (table["accuracy"] - table["confidence"]).abs()).sum() / table["faces"].sum())


def calibrate(logits: torch.Tensor, labels) -> dict:
    """Temperature, uncertain threshold and ECE before / after, from validation logits and labels."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    t = fit_temperature(logits, labels)
    before, after = torch.softmax(logits, 1).numpy(), torch.softmax(logits / t, 1).numpy()
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
