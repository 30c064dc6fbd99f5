"""What a finished run computes from its data: test-set predictions in the leaderboard format (id,label) and
their score against known labels, the calibration, and the test faces with a copy among the training faces."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fer_lib import CLASS_NAMES
from fer_lib.core.io import array_sha256, atomic_write, default_cache_dir, exclusive_lock
from fer_lib.data.duplicates import cached_duplicates
from fer_lib.data.layouts import DataError, FaceSet
from fer_lib.model.calibration import calibrate, read_calibration, write_calibration
from fer_lib.model.inference import predict_logits
from fer_lib.training.runs import load_trained, prediction_tta, resolve_device, run_lock
from fer_lib.training.scoring import score_test_set


def face_ids(faces: FaceSet) -> np.ndarray:
    """The ids a user's course expects: the image file names where the faces came from class folders (test/angry/
    im3.png -> "angry/im3.png"), else the faces' ids (a test.csv's id column, test_img/0000.jpg -> 0)."""
    return faces.names if faces.names is not None else faces.ids


def write_predictions(run_dir: Path, faces: FaceSet, out: Path, tta: str = "", device: str = "auto") -> dict:
    """Predict every face and write ``out`` (id,label) atomically; returns predicted counts per class.

    ``tta`` defaults to the test-time views the run chose on validation (run.json)."""
    tta = tta or prediction_tta(run_dir)
    dev = resolve_device(device)
    model, config = load_trained(run_dir, device=dev)
    labels = predict_logits(model, faces.images, config.input_size, tta=tta, device=dev).argmax(1).numpy()
    table = pd.DataFrame({"id": face_ids(faces), "label": labels})
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


# ---------------------------------------------------------------------------------------------
# what a finished run knows about its data: calibration, test predictions, test faces with a training copy

PREDICTIONS_FILE = "predictions.csv"
TEST_DUPLICATES_FILE = "test_duplicates.csv"
TEST_OUTPUTS_FILE = "test_outputs.json"  # the test set the two files above describe, and their counts


def test_fingerprint(faces: FaceSet) -> str:
    """sha256 of the test faces' pixels and ids: the files above are recomputed for another test set."""
    return array_sha256(faces.images, np.asarray(faces.ids, dtype=np.int64))


def write_calibration_for(run_dir: Path, val: FaceSet, device: str | torch.device = "cpu",
                          logits: torch.Tensor | None = None, tta: str = "") -> dict:
    """Fit the temperature and the "uncertain" threshold on the validation faces with the test-time views the
    predictions use (``tta``, default: run.json's), and write calibration.json (``logits``: those views' validation
    logits, when already at hand)."""
    tta = tta or prediction_tta(run_dir)
    if logits is None:
        model, config = load_trained(run_dir, device=device)
        logits = predict_logits(model, val.images, config.input_size, tta=tta, device=device)
    calibration = {**calibrate(logits, val.labels), "tta": tta}
    write_calibration(run_dir, calibration)
    return calibration


def write_test_outputs(run_dir: Path, train: FaceSet, test: FaceSet, device: str | torch.device = "cpu",
                       tta: str = "", out_dir: Path | None = None) -> dict:
    """predictions.csv (the run's test-time views), test_duplicates.csv (the ids of test faces with an exact or near
    copy among the training faces, and which kind; no labels, so that whoever holds the test labels can score the
    model on unseen faces too) and test_outputs.json (the test set's fingerprint and the counts; where the test
    faces carry labels, their score: training.scoring), in ``out_dir`` (default ``run_dir``)."""
    tta = tta or prediction_tta(run_dir)
    out_dir = Path(out_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = write_predictions(run_dir, test, out_dir / PREDICTIONS_FILE, tta=tta, device=str(device))
    dup = cached_duplicates(train.images, test.images, cache_dir=default_cache_dir())
    has_copy = dup.test_copy != ""
    table = pd.DataFrame({"id": face_ids(test)[has_copy], "copy": dup.test_copy[has_copy]})
    atomic_write(out_dir / TEST_DUPLICATES_FILE, lambda tmp: table.to_csv(tmp, index=False))
    outputs = {"test_fingerprint": test_fingerprint(test),
               "predictions": {"file": PREDICTIONS_FILE, "rows": len(test), "tta": tta,
                               "predicted_class_counts": counts},
               "duplicates": {"file": TEST_DUPLICATES_FILE, "rows": int(has_copy.sum()),
                              **dup.summary(train.labels)}}
    if test.labels is not None:  # the labels are known (Kaggle's file, class folders, the demo): score them
        predicted = pd.read_csv(out_dir / PREDICTIONS_FILE)["label"].to_numpy()
        scores = score_test_set(test.labels, predicted, test.usage, has_copy)
        outputs["test"] = {**scores.as_metrics(), "low": scores.low, "high": scores.high,
                           "faces_without_copy": scores.faces_without_copy, "usage_faces": scores.usage_faces,
                           "confusion": scores.confusion.tolist()}
    atomic_write(out_dir / TEST_OUTPUTS_FILE, lambda tmp: tmp.write_text(json.dumps(outputs, indent=2)))
    return outputs


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def outputs_folder(run_dir: Path, test: FaceSet | None, elsewhere: Path) -> Path:
    """Where the test outputs of ``test`` live: the run's own folder when they were made for this test set (or the
    folder holds none yet), else ``elsewhere``: a shipped model's folder keeps the outputs it was shipped with."""
    outputs = _read_json(Path(run_dir) / TEST_OUTPUTS_FILE)
    if test is None or outputs is None or outputs.get("test_fingerprint") == test_fingerprint(test):
        return Path(run_dir)
    return Path(elsewhere)


def ensure_run_outputs(run_dir: Path, train: FaceSet, val: FaceSet, test: FaceSet | None, device: str = "auto",
                       wait: bool = True, out_dir: Path | None = None) -> tuple[dict, dict | None]:
    """(calibration, test outputs or None without a test set) of a finished run: read from its folder (the test
    outputs from ``out_dir``, default the run's folder), or, for a run that predates them or another test set,
    computed once under the run's lock (a second process waits, then reads what the first wrote)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir or run_dir)

    def current():
        outputs = _read_json(out_dir / TEST_OUTPUTS_FILE)
        fresh = test is None or (outputs is not None and outputs.get("test_fingerprint") == test_fingerprint(test)
                                 and all((out_dir / n).is_file() for n in (PREDICTIONS_FILE, TEST_DUPLICATES_FILE)))
        return read_calibration(run_dir), (outputs if test is not None else None), fresh

    calibration, outputs, fresh = current()
    if calibration is not None and fresh:
        return calibration, outputs
    with exclusive_lock(run_lock(run_dir), f"writing the calibration and test predictions of {run_dir}", wait=wait):
        calibration, outputs, fresh = current()  # another process may have written them while we waited
        dev = resolve_device(device)
        if calibration is None:
            calibration = write_calibration_for(run_dir, val, dev)
        if not fresh:
            outputs = write_test_outputs(run_dir, train, test, dev, out_dir=out_dir)
    return calibration, outputs
