"""Any copy of a shipped model's data is served by it without training: the faces re-encoded as JPEG in class
folders, reordered, with a face added and one missing; the labelled test faces are scored and predicted by name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fer_lib.report.context as context
from fer_lib import CLASS_NAMES
from fer_lib.data.face_keys import KEYS_FILE, NEW, VAL
from fer_lib.data.synthetic import write_synthetic_dataset
from fer_lib.training.predict import PREDICTIONS_FILE, TEST_OUTPUTS_FILE

SETTINGS = dict(weights="random", val_fraction=0.2)  # the smoke recipe: one epoch, seconds


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A model trained on a small synthetic dataset and shipped as its report's model/ folder."""
    root = tmp_path_factory.mktemp("shipped")
    write_synthetic_dataset(root / "original", n_train=150, n_test=30, seed=3)
    models = root / "models"
    models.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setattr(context, "SHIPPED_MODELS", models)
    mp.setenv("FER_CACHE", str(root / "cache"))
    try:
        ctx = context.load_context(str(root / "original"), "smoke", str(root / "runs"), "cpu", **SETTINGS)
        run_dir = ctx.ensure_run()
        shutil.copytree(run_dir, models / "synthetic-smoke" / "model")
        train, val = ctx.split
    finally:
        mp.undo()
    return root, models / "synthetic-smoke" / "model", ctx.dataset, val


def write_class_folders(folder, split, images, labels, fmt, names):
    for image, label, name in zip(images, labels, names):
        path = folder / split / CLASS_NAMES[label].lower() / f"{name}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, **({"quality": 90} if fmt == "jpg" else {}))


def test_a_reencoded_reordered_copy_is_served_scored_and_predicted_by_file_name(shipped, tmp_path, monkeypatch):
    root, model_dir, original, val = shipped
    monkeypatch.setattr(context, "SHIPPED_MODELS", model_dir.parent.parent)
    rng = np.random.default_rng(0)
    keep = np.delete(np.arange(len(original.train)), 5)  # the user's copy lacks one face ...
    # ... and has one the model never saw (a real face: the synthetic ones are drawn alike)
    real_face = Path(__file__).parent / "data" / "fer2013_test_faces" / "0003.png"
    extra = np.asarray(Image.open(real_face).convert("L"))[None]
    extra_label = np.array([3])
    images = np.concatenate([original.train.images[keep], extra])
    labels = np.concatenate([original.train.labels[keep], extra_label])
    order = rng.permutation(len(images))
    copy = tmp_path / "course"
    write_class_folders(copy, "train", images[order], labels[order], "jpg", [f"im{i}" for i in range(len(order))])
    write_class_folders(copy, "test", original.test.images, original.test.labels, "png",
                        [f"t{i}" for i in range(len(original.test))])
    shipped_outputs = (model_dir / TEST_OUTPUTS_FILE).read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("the copy must be served by the shipped model, not trained")

    monkeypatch.setattr(context, "ensure_run", no_training)
    ctx = context.load_context(str(copy), "smoke", str(tmp_path / "runs"), "cpu", **SETTINGS)
    assert ctx.ensure_run() == model_dir
    summary = ctx.served.summary()
    assert (summary["exact"], summary["near"], summary["new"]) == (0, len(images) - 1, 1)  # JPEG: near, not exact
    j = int(np.flatnonzero(order == len(images) - 1)[0])  # where the unseen face was written: im<j>.jpg
    unseen = list(ctx.dataset.train.names).index(f"{CLASS_NAMES[extra_label[0]].lower()}/im{j}.jpg")
    assert ctx.served.match.side[unseen] == NEW
    missing_was_val = bool((val.ids == 5).any())
    assert len(ctx.val) == len(val) - missing_was_val and (ctx.served.match.side == VAL).sum() == len(ctx.val)
    outputs = ctx.test_outputs()
    assert outputs["test"]["faces"] == len(original.test)
    predictions = pd.read_csv(ctx.outputs_dir / PREDICTIONS_FILE)
    assert predictions["id"].str.match(r"^[a-z]+/t\d+\.png$").all() and len(predictions) == len(original.test)
    labels_by_name = {f"{CLASS_NAMES[label].lower()}/t{i}.png": label for i, label in enumerate(original.test.labels)}
    right = np.mean([labels_by_name[n] == p for n, p in zip(predictions["id"], predictions["label"])])
    assert outputs["test"]["accuracy"] == pytest.approx(right)
    assert ctx.outputs_dir != model_dir and (model_dir / TEST_OUTPUTS_FILE).read_bytes() == shipped_outputs
    assert (model_dir / KEYS_FILE).exists()


def test_too_few_known_faces_or_retrain_means_training(shipped, tmp_path, monkeypatch):
    root, model_dir, original, _ = shipped
    monkeypatch.setattr(context, "SHIPPED_MODELS", model_dir.parent.parent)
    other = tmp_path / "other"
    write_synthetic_dataset(other, n_train=150, n_test=10, seed=8)  # other faces: the model knows none
    ctx = context.load_context(str(other), "smoke", str(tmp_path / "runs"), "cpu", **SETTINGS)
    assert ctx.served is None
    with pytest.raises(context.NoRun, match="Train it first"):
        ctx.run_dir
    ctx = context.load_context(str(root / "original"), "smoke", str(tmp_path / "runs"), "cpu", retrain=True,
                               **SETTINGS)
    assert ctx.shipped_models == [] and ctx.served is None
    with pytest.raises(context.NoRun):
        ctx.run_dir  # the shipped model is not used: --retrain trains this data's own


def test_the_run_key_match_still_wins_and_metrics_say_how(shipped, monkeypatch):
    root, model_dir, original, val = shipped
    monkeypatch.setattr(context, "SHIPPED_MODELS", model_dir.parent.parent)
    ctx = context.load_context(str(root / "original"), "smoke", str(root / "elsewhere"), "cpu", **SETTINGS)
    assert ctx.run_dir == model_dir and ctx.served is None
    assert np.array_equal(ctx.val.ids, val.ids)
    assert json.loads((model_dir / TEST_OUTPUTS_FILE).read_text())["test"]["faces"] == len(original.test)


def test_a_build_never_replaces_a_report_folder_that_carries_another_model(tmp_path):
    from fer_lib.report.build import report_folder

    model = tmp_path / "fer2013" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"run_key": "aaa"}))
    assert report_folder(tmp_path, "fer2013", "aaa") == "fer2013"  # the same model: rebuilt in place
    assert report_folder(tmp_path, "fer2013", "bbb") == "fer2013"  # no face keys: an ordinary earlier report
    (model / KEYS_FILE).write_bytes(b"")
    assert report_folder(tmp_path, "fer2013", "bbb") == "fer2013-bbb"  # the shipped model stays
    assert report_folder(tmp_path, "course", "bbb") == "course"
