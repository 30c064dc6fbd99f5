"""Finishing a run: what a trained run computes once from its data, so that pages and builds only read it, and
the same outputs, computed once into the run cache, for faces it did not finish on (a served copy, another test
set)."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fer_lib import CLASS_NAMES, NUM_CLASSES
from fer_lib.core import io
from fer_lib.core.stats import wilson_interval
from fer_lib.data.duplicates import cached_duplicates
from fer_lib.data.face_keys import FaceKeys
from fer_lib.data.layouts import DataError, Dataset, FaceSet
from fer_lib.model.calibration import calibrate, write_calibration
from fer_lib.model.inference import TTA_MODES, accuracy, predict_logits
from fer_lib.training import runs

VAL_LOGITS_FILE = "val_logits.npz"  # plain and with the run's views, with the fingerprint of the faces they score
PREDICTIONS_FILE = "predictions.csv"
TEST_DUPLICATES_FILE = "test_duplicates.csv"
TEST_OUTPUTS_FILE = "test_outputs.json"  # the test set the two files above describe, and their counts


def faces_fingerprint(faces: FaceSet) -> str:
    """sha256 of faces' pixels and ids, in order: the outputs stored for them are recomputed for other faces."""
    return io.array_sha256(faces.images, np.asarray(faces.ids, dtype=np.int64))


def finish_run(run_dir: Path, dataset: Dataset, config: runs.TrainConfig, train_set: FaceSet, val_set: FaceSet,
               history: list[dict], device: torch.device, provenance: dict) -> None:
    """Everything a finished run knows about its data, written into ``run_dir``; run.json last (a folder without it
    is no finished run). ``provenance``: the weights' origin and the precision, from the training."""
    averaged = bool(config.ema_decay)
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    # the deliverable: the selected weights in float16 (half the size; every page and prediction is made from these)
    shipped = {k: v.half() if v.is_floating_point() else v for k, v in best.items()}
    io.atomic_write(run_dir / runs.WEIGHTS_FILE, lambda tmp: torch.save(shipped, tmp))
    FaceKeys.of(train_set.images, val_set.images).save(run_dir)  # any copy of the data finds this model
    model = runs.load_trained_weights(run_dir / runs.WEIGHTS_FILE, device)
    logits = {mode: predict_logits(model, val_set.images, config.input_size, tta=mode, device=device)
              for mode in TTA_MODES}
    by_tta = {mode: accuracy(x, val_set.labels) for mode, x in logits.items()}
    tta = max(("flip", "flip+shift"), key=lambda m: by_tta[m])
    write_val_logits(run_dir, val_set, logits["none"], logits[tta])
    write_calibration(run_dir, {**calibrate(logits[tta], val_set.labels), "tta": tta})
    if dataset.test is not None:
        write_test_outputs(run_dir, dataset.train, dataset.test, device, tta=tta)
    selected = runs.selected_row(history, averaged)
    sample = runs.train_eval_indices(len(train_set), config.seed)
    sample_logits = predict_logits(model, train_set.images[sample], config.input_size, device=device)
    sample_labels = torch.as_tensor(train_set.labels[sample])
    run = {**provenance, "device": str(device), "cpu": io.cpu_model(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(), "epochs": len(history),
           "train_faces": len(train_set), "val_faces": len(val_set), "selected_epoch": selected["epoch"],
           "selection": ("the final epoch's averaged weights (the schedule anneals to zero; no selection over epochs)"
                         if averaged else "the epoch with the highest validation accuracy with flip views"),
           "train_seconds": sum(r["seconds"] for r in history),
           "weights_sha256": io.file_sha256(run_dir / runs.WEIGHTS_FILE),
           # the test-time views predictions use, chosen on validation with the shipped float16 weights
           "val_acc_by_tta": by_tta, "tta": tta,
           # the kept weights scored like validation (eval mode, no augmentation, no views) on the training sample
           "train_eval": {"acc": accuracy(sample_logits, sample_labels),
                          "loss": F.cross_entropy(sample_logits, sample_labels).item(), "faces": len(sample)}}
    io.atomic_write(run_dir / "run.json", lambda tmp: tmp.write_text(json.dumps(run, indent=2)))


def write_val_logits(out_dir: Path, val: FaceSet, plain: torch.Tensor, views: torch.Tensor) -> None:
    io.atomic_savez(Path(out_dir) / VAL_LOGITS_FILE, plain=plain.numpy(), views=views.numpy(),
                 fingerprint=np.array(faces_fingerprint(val)))


def read_val_logits(out_dir: Path, val: FaceSet) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(plain, with the run's views) validation logits stored in ``out_dir`` for these faces, else None."""
    path = Path(out_dir) / VAL_LOGITS_FILE
    if path.is_file():
        with np.load(path) as z:
            if str(z["fingerprint"]) == faces_fingerprint(val):
                return torch.from_numpy(z["plain"]), torch.from_numpy(z["views"])
    return None


def read_test_outputs(out_dir: Path, test: FaceSet) -> dict | None:
    """test_outputs.json in ``out_dir`` when it describes these test faces (written last, after its two files)."""
    path = Path(out_dir) / TEST_OUTPUTS_FILE
    outputs = json.loads(path.read_text()) if path.is_file() else {}
    return outputs if outputs.get("test_fingerprint") == faces_fingerprint(test) else None


def ensure_outputs(run_dir: Path, out_dir: Path, train: FaceSet, val: FaceSet, test: FaceSet | None,
                   device: str = "auto") -> None:
    """The validation logits of ``val`` and the test outputs of ``test`` (None: no test set) for a finished run,
    into ``out_dir`` where neither it nor the run's folder holds them (written atomically: two builds at once
    compute them twice, never half)."""
    dev = runs.resolve_device(device)
    if all(read_val_logits(d, val) is None for d in (run_dir, out_dir)):  # plain and with the run's views
        model, config = runs.load_trained(run_dir, device=dev)
        write_val_logits(out_dir, val, predict_logits(model, val.images, config.input_size, device=dev),
                         predict_logits(model, val.images, config.input_size, tta=runs.prediction_tta(run_dir),
                                        device=dev))
    if test is not None and all(read_test_outputs(d, test) is None for d in (run_dir, out_dir)):
        write_test_outputs(run_dir, train, test, dev, out_dir=out_dir)


def face_ids(faces: FaceSet) -> np.ndarray:
    """The ids a user's course expects: the image file names where the faces came from class folders (test/angry/
    im3.png -> "angry/im3.png"), else the faces' ids (a test.csv's id column, test_img/0000.jpg -> 0)."""
    return faces.names if faces.names is not None else faces.ids


def write_predictions(run_dir: Path, faces: FaceSet, out: Path, tta: str = "", device: str = "auto") -> dict:
    """Predict every face with the run's weights and write ``out`` (id,label) atomically; returns predicted counts
    per class. ``tta`` defaults to the test-time views the run chose on validation (run.json)."""
    dev = runs.resolve_device(device)
    model, config = runs.load_trained(run_dir, device=dev)
    labels = predict_logits(model, faces.images, config.input_size, tta=tta or runs.prediction_tta(run_dir),
                            device=dev).argmax(1).numpy()
    table = pd.DataFrame({"id": face_ids(faces), "label": labels})
    io.atomic_write(Path(out), lambda tmp: table.to_csv(tmp, index=False))
    return {CLASS_NAMES[i]: int(c) for i, c in enumerate(np.bincount(labels, minlength=len(CLASS_NAMES)))}


def write_test_outputs(run_dir: Path, train: FaceSet, test: FaceSet, device: str | torch.device = "cpu",
                       tta: str = "", out_dir: Path | None = None) -> dict:
    """predictions.csv, test_duplicates.csv (the ids of test faces with a training copy: whoever holds the labels
    can score unseen faces too) and test_outputs.json (the faces' fingerprint, the counts, the score where the labels
    are known), in ``out_dir`` (default ``run_dir``)."""
    tta = tta or runs.prediction_tta(run_dir)
    out_dir = Path(out_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = write_predictions(run_dir, test, out_dir / PREDICTIONS_FILE, tta=tta, device=str(device))
    dup = cached_duplicates(train.images, test.images, cache_dir=io.default_cache_dir())
    has_copy = dup.test_copy != ""
    table = pd.DataFrame({"id": face_ids(test)[has_copy], "copy": dup.test_copy[has_copy]})
    io.atomic_write(out_dir / TEST_DUPLICATES_FILE, lambda tmp: table.to_csv(tmp, index=False))
    outputs = {"test_fingerprint": faces_fingerprint(test),
               "predictions": {"file": PREDICTIONS_FILE, "rows": len(test), "tta": tta,
                               "predicted_class_counts": counts},
               "duplicates": {"file": TEST_DUPLICATES_FILE, "rows": int(has_copy.sum()),
                              **dup.summary(train.labels)}}
    if test.labels is not None:  # the labels are known (Kaggle's file, class folders, the demo): score them
        predicted = pd.read_csv(out_dir / PREDICTIONS_FILE)["label"].to_numpy()
        outputs["test"] = score_test_set(test.labels, predicted, test.usage, has_copy)
    io.atomic_write(out_dir / TEST_OUTPUTS_FILE, lambda tmp: tmp.write_text(json.dumps(outputs, indent=2)))
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
    strays = set(pred["id"]) ^ set(truth["id"])
    if strays or pred["id"].duplicated().any():
        raise DataError(f"{pred_file}: its ids are not {label_file}'s once each (in one file only: "
                        f"{', '.join(sorted(map(str, strays))[:3]) or 'none'}; predicted twice: "
                        f"{pred['id'].duplicated().sum()}): predictions of another test set?")
    merged = truth.merge(pred, on="id", suffixes=("_true", "_pred"))
    return float((merged["label_true"] == merged["label_pred"]).mean()), len(merged)
