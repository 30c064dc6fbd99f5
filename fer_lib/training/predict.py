"""Test-set predictions in the leaderboard format (id,label) and scoring them against known labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fer_lib import CLASS_NAMES
from fer_lib.core.io import atomic_write
from fer_lib.data.layouts import DataError, FaceSet
from fer_lib.model.inference import predict_logits
from fer_lib.training.runs import load_trained, prediction_tta, resolve_device


def write_predictions(run_dir: Path, faces: FaceSet, out: Path, tta: str = "", device: str = "auto") -> dict:
    """Predict every face and write ``out`` (id,label) atomically; returns predicted counts per class.

    ``tta`` defaults to the test-time views the run chose on validation (run.json)."""
    tta = tta or prediction_tta(run_dir)
    dev = resolve_device(device)
    model, config = load_trained(run_dir, device=dev)
    labels = predict_logits(model, faces.images, config.input_size, tta=tta, device=dev).argmax(1).numpy()
    table = pd.DataFrame({"id": faces.ids, "label": labels})
    atomic_write(Path(out), lambda tmp: table.to_csv(tmp, index=False))
    return {CLASS_NAMES[i]: int(c) for i, c in enumerate(np.bincount(labels, minlength=len(CLASS_NAMES)))}


def score_predictions(pred_file: Path, label_file: Path) -> tuple[float, int]:
    """Accuracy of ``pred_file`` (id,label) against ``label_file`` (id,label); every id must be predicted."""
    pred, truth = (pd.read_csv(p) for p in (pred_file, label_file))
    for path, table in ((pred_file, pred), (label_file, truth)):
        if list(table.columns) != ["id", "label"]:
            raise DataError(f"{path}: columns {','.join(table.columns)}, expected id,label")
    extra = sorted(set(pred["id"]) - set(truth["id"]))
    if extra:
        raise DataError(f"{pred_file}: {len(extra)} id(s) not in {label_file}, e.g. {extra[0]}: predictions of another "
                        "test set?")
    duplicated = pred["id"][pred["id"].duplicated()]
    if len(duplicated):
        raise DataError(f"{pred_file}: id {duplicated.iloc[0]} is predicted more than once")
    merged = truth.merge(pred, on="id", how="left", suffixes=("_true", "_pred"))
    missing = merged["label_pred"].isna()
    if missing.any():
        raise DataError(f"{pred_file}: no prediction for {missing.sum()} id(s), e.g. {merged['id'][missing].iloc[0]}")
    return float((merged["label_true"] == merged["label_pred"]).mean()), len(merged)
