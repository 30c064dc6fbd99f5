"""Finishing a run: what a trained run computes once from its data, so that pages and builds only read it.

:func:`finish_run` (after the last epoch) writes the shipped weights, the face keys, the validation logits (plain
and with the views it chooses), the calibration, the kept weights' training-sample score, the test outputs, and
run.json last. Faces it did not finish on (a served copy, another test set) get theirs once in the run cache
(:func:`ensure_outputs`).
"""
from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fer_lib import CLASS_NAMES, NUM_CLASSES
from fer_lib.core.io import (
    array_sha256,
    atomic_savez,
    atomic_write,
    cpu_model,
    default_cache_dir,
    exclusive_lock,
    file_sha256,
)
from fer_lib.core.stats import wilson_interval
from fer_lib.data.duplicates import cached_duplicates
from fer_lib.data.face_keys import FaceKeys
from fer_lib.data.layouts import DataError, Dataset, FaceSet
from fer_lib.model.calibration import calibrate, write_calibration
from fer_lib.model.inference import TTA_MODES, accuracy, predict_logits
from fer_lib.training.runs import (
    WEIGHTS_FILE,
    TrainConfig,
    load_trained,
    load_trained_weights,
    prediction_tta,
    resolve_device,
    run_lock,
    selected_row,
    train_eval_indices,
)

VAL_LOGITS_FILE = "val_logits.npz"  # plain and with the run's views, with the fingerprint of the faces they score
PREDICTIONS_FILE = "predictions.csv"
TEST_DUPLICATES_FILE = "test_duplicates.csv"
TEST_OUTPUTS_FILE = "test_outputs.json"  # the test set the two files above describe, and their counts


def faces_fingerprint(faces: FaceSet) -> str:
    """sha256 of faces' pixels and ids, in order: the outputs stored for them are recomputed for other faces."""
    return array_sha256(faces.images, np.asarray(faces.ids, dtype=np.int64))


def finish_run(run_dir: Path, dataset: Dataset, config: TrainConfig, train_set: FaceSet, val_set: FaceSet,
               history: list[dict], device: torch.device, provenance: dict) -> None:
    """Everything a finished run knows about its data, written into ``run_dir``; run.json last (a folder without it
    is no finished run). ``provenance``: the weights' origin and the precision, from the training."""
    averaged = bool(config.ema_decay)
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    # the deliverable: the selected epoch's weights in float16 (half the size; every page and prediction is made
    # from these, so a copy of the run folder reproduces the report exactly)
    shipped = {k: v.half() if v.is_floating_point() else v for k, v in best.items()}
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: torch.save(shipped, tmp))
    FaceKeys.of(train_set.images, val_set.images).save(run_dir)  # any copy of the data finds this model
    model = load_trained_weights(run_dir / WEIGHTS_FILE, device)
    logits = {mode: predict_logits(model, val_set.images, config.input_size, tta=mode, device=device)
              for mode in TTA_MODES}
    by_tta = {mode: accuracy(x, val_set.labels) for mode, x in logits.items()}
    tta = max(("flip", "flip+shift"), key=lambda m: by_tta[m])
    write_val_logits(run_dir, val_set, logits["none"], logits[tta])
    write_calibration(run_dir, {**calibrate(logits[tta], val_set.labels), "tta": tta})
    if dataset.test is not None:
        write_test_outputs(run_dir, dataset.train, dataset.test, device, tta=tta)
    selected = selected_row(history, averaged)
    sample = train_eval_indices(len(train_set), config.seed)
    sample_logits = predict_logits(model, train_set.images[sample], config.input_size, device=device)
    sample_labels = torch.as_tensor(train_set.labels[sample])
    run = {**provenance, "device": str(device), "cpu": cpu_model(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(), "epochs": len(history),
           "train_faces": len(train_set), "val_faces": len(val_set), "selected_epoch": selected["epoch"],
           "selection": ("the final epoch's averaged weights (the schedule anneals to zero; no selection over epochs)"
                         if averaged else "the epoch with the highest validation accuracy with flip views"),
           "train_seconds": sum(r["seconds"] for r in history),
           "weights_sha256": file_sha256(run_dir / WEIGHTS_FILE),
           # the test-time views predictions use, chosen on validation with the shipped float16 weights
           "val_acc_by_tta": by_tta, "tta": tta,
           # the kept weights scored like validation (eval mode, no augmentation, no views) on the training sample
           "train_eval": {"acc": accuracy(sample_logits, sample_labels),
                          "loss": F.cross_entropy(sample_logits, sample_labels).item(), "faces": len(sample)}}
    atomic_write(run_dir / "run.json", lambda tmp: tmp.write_text(json.dumps(run, indent=2)))


def write_val_logits(out_dir: Path, val: FaceSet, plain: torch.Tensor, views: torch.Tensor) -> None:
    atomic_savez(Path(out_dir) / VAL_LOGITS_FILE, plain=plain.numpy(), views=views.numpy(),
                 fingerprint=np.array(faces_fingerprint(val)))


def read_val_logits(out_dir: Path, val: FaceSet) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(plain, with the run's views) validation logits stored in ``out_dir`` for these faces, else None."""
    path = Path(out_dir) / VAL_LOGITS_FILE
    if not path.is_file():
        return None
    with np.load(path) as z:
        if str(z["fingerprint"]) != faces_fingerprint(val):
            return None
        return torch.from_numpy(z["plain"]), torch.from_numpy(z["views"])


def read_test_outputs(out_dir: Path, test: FaceSet) -> dict | None:
    """test_outputs.json in ``out_dir`` when it describes these test faces (its two files present), else None."""
    try:
        outputs = json.loads((Path(out_dir) / TEST_OUTPUTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    fresh = outputs.get("test_fingerprint") == faces_fingerprint(test) and all(
        (Path(out_dir) / n).is_file() for n in (PREDICTIONS_FILE, TEST_DUPLICATES_FILE))
    return outputs if fresh else None


def ensure_outputs(run_dir: Path, out_dir: Path, train: FaceSet, val: FaceSet, test: FaceSet | None,
                   device: str = "auto", wait: bool = True) -> None:
    """The validation logits of ``val`` and the test outputs of ``test`` (None: no test set) for a finished run,
    in ``out_dir`` unless the run's own folder already holds them; computed once, under ``out_dir``'s lock (a
    second process waits, then finds them)."""
    def missing() -> tuple[bool, bool]:
        logits = any(read_val_logits(d, val) is not None for d in (run_dir, out_dir))
        tests = test is None or any(read_test_outputs(d, test) is not None for d in (run_dir, out_dir))
        return not logits, not tests

    if not any(missing()):
        return
    with exclusive_lock(run_lock(out_dir), f"computing the outputs of {run_dir} for {out_dir}", wait=wait):
        need_logits, need_tests = missing()  # another process may have written them while we waited
        dev = resolve_device(device)
        if need_logits:
            model, config = load_trained(run_dir, device=dev)
            write_val_logits(out_dir, val, predict_logits(model, val.images, config.input_size, device=dev),
                             predict_logits(model, val.images, config.input_size, tta=prediction_tta(run_dir),
                                            device=dev))
        if need_tests:
            write_test_outputs(run_dir, train, test, dev, out_dir=out_dir)


def face_ids(faces: FaceSet) -> np.ndarray:
    """The ids a user's course expects: the image file names where the faces came from class folders (test/angry/
    im3.png -> "angry/im3.png"), else the faces' ids (a test.csv's id column, test_img/0000.jpg -> 0)."""
    return faces.names if faces.names is not None else faces.ids


def write_predictions(run_dir: Path, faces: FaceSet, out: Path, tta: str = "", device: str = "auto") -> dict:
    """Predict every face with the run's weights and write ``out`` (id,label) atomically; returns predicted counts
    per class. ``tta`` defaults to the test-time views the run chose on validation (run.json)."""
    dev = resolve_device(device)
    model, config = load_trained(run_dir, device=dev)
    labels = predict_logits(model, faces.images, config.input_size, tta=tta or prediction_tta(run_dir),
                            device=dev).argmax(1).numpy()
    table = pd.DataFrame({"id": face_ids(faces), "label": labels})
    atomic_write(Path(out), lambda tmp: table.to_csv(tmp, index=False))
    return {CLASS_NAMES[i]: int(c) for i, c in enumerate(np.bincount(labels, minlength=len(CLASS_NAMES)))}


def write_test_outputs(run_dir: Path, train: FaceSet, test: FaceSet, device: str | torch.device = "cpu",
                       tta: str = "", out_dir: Path | None = None) -> dict:
    """predictions.csv (the run's views), test_duplicates.csv (the ids of test faces with an exact or near training
    copy, without labels: whoever holds the labels can score unseen faces too) and test_outputs.json (the test
    set's fingerprint, the counts, and the score where the labels are known), in ``out_dir`` (default ``run_dir``)."""
    tta = tta or prediction_tta(run_dir)
    out_dir = Path(out_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = write_predictions(run_dir, test, out_dir / PREDICTIONS_FILE, tta=tta, device=str(device))
    dup = cached_duplicates(train.images, test.images, cache_dir=default_cache_dir())
    has_copy = dup.test_copy != ""
    table = pd.DataFrame({"id": face_ids(test)[has_copy], "copy": dup.test_copy[has_copy]})
    atomic_write(out_dir / TEST_DUPLICATES_FILE, lambda tmp: table.to_csv(tmp, index=False))
    outputs = {"test_fingerprint": faces_fingerprint(test),
               "predictions": {"file": PREDICTIONS_FILE, "rows": len(test), "tta": tta,
                               "predicted_class_counts": counts},
               "duplicates": {"file": TEST_DUPLICATES_FILE, "rows": int(has_copy.sum()),
                              **dup.summary(train.labels)}}
    if test.labels is not None:  # the labels are known (Kaggle's file, class folders, the demo): score them
        predicted = pd.read_csv(out_dir / PREDICTIONS_FILE)["label"].to_numpy()
        outputs["test"] = score_test_set(test.labels, predicted, test.usage, has_copy)
    atomic_write(out_dir / TEST_OUTPUTS_FILE, lambda tmp: tmp.write_text(json.dumps(outputs, indent=2)))
    return outputs


def score_test_set(labels: np.ndarray, predicted: np.ndarray, usage: np.ndarray | None = None,
               has_training_copy: np.ndarray | None = None) -> dict:
    """Labelled test faces scored: accuracy with its Wilson interval, the confusion matrix (rows true), accuracy per
    Kaggle Usage where named, and on the faces without a training copy (exact or near) where that is known."""
    from sklearn.metrics import confusion_matrix

    labels, predicted = np.asarray(labels), np.asarray(predicted)
    correct = labels == predicted
    low, high = wilson_interval(int(correct.sum()), len(correct))
    score = {"faces": len(labels), "accuracy": float(correct.mean())}
    if usage is not None:
        by_usage = pd.Series(correct).groupby(np.asarray(usage))
        score["by_usage"], score["usage_faces"] = by_usage.mean().to_dict(), by_usage.size().to_dict()
    if has_training_copy is not None:
        unseen = ~np.asarray(has_training_copy, dtype=bool)
        score["faces_without_copy"] = int(unseen.sum())
        if unseen.any():
            score["without_training_copy"] = float(correct[unseen].mean())
    confusion = confusion_matrix(labels, predicted, labels=range(NUM_CLASSES))
    return {**score, "low": float(low), "high": float(high), "confusion": confusion.tolist()}


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
