"""Shared fixtures: small synthetic datasets written through the same CSV path as real data."""
from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fer_lib.data.synthetic import write_synthetic_dataset

warnings.filterwarnings("ignore", message=".*ImageNet weights not found.*")


# the slowest files first, the slowest of all first (a full report build, the eight layout journeys, two-process
# runs, a trained model's explanations), the many small files last: `make test` gives each of its two workers (one
# per core) whole files, the next one when two tests of its current file are left (pytest-xdist's loadfile), so the
# worker that finishes first takes the small files and the two finish together
SLOWEST_FIRST = ("test_report.py", "test_journey_layouts.py", "test_concurrency.py", "test_q4_saliency.py",
                 "test_train.py", "test_integrity.py", "test_q5_filters.py", "test_classify.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """300 training and 60 test faces of the embedded dataset (seeded)."""
    out = tmp_path_factory.mktemp("tiny")
    write_synthetic_dataset(out, n_train=300, n_test=60, seed=1)
    return out


# a run that takes seconds: two epochs on 96 faces, 30 validation faces, no weights file needed
TINY = dict(epochs=2, max_train=96, batch_size=32, weights="random", val_fraction=0.1)


@pytest.fixture(scope="module")
def tiny(tiny_dataset):
    """The tiny synthetic dataset, loaded."""
    from fer_lib.data.layouts import load_dataset

    return load_dataset(tiny_dataset)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own parsed-array cache, never the user's."""
    monkeypatch.setenv("FER_CACHE", str(tmp_path / "cache"))


def pixel_row(rng: np.random.Generator) -> str:
    return " ".join(map(str, rng.integers(0, 256, 48 * 48)))


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    text = header + "\n" + "".join(r + "\n" for r in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture(scope="session")
def trained_synthetic(tmp_path_factory):
    """A model trained briefly on synthetic faces (whose cue regions are known), with validation faces: two epochs of
    the library's own epoch loop, without a run's per-epoch scoring and finish step (half the time; test_train.py
    tests those)."""
    import torch

    from fer_lib.data.layouts import load_dataset
    from fer_lib.model.network import build_model
    from fer_lib.training.runs import TrainConfig, resolve_precision, split_for
    from fer_lib.training.train import make_optimizer, train_one_epoch

    folder = tmp_path_factory.mktemp("synthetic-train")
    write_synthetic_dataset(folder, n_train=1100, n_test=10, seed=5)
    # two epochs: saliency on the drawn features 2.2x their area (the test asks 1.5x; three epochs: 2.9x, 50% dearer)
    config = TrainConfig(epochs=2, max_train=1000, batch_size=64, lr=3e-3, weights="random", val_fraction=0.1)
    train_set, val_set = split_for(load_dataset(folder), config)
    cpu = torch.device("cpu")
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = build_model("random")[0].to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(model, config, len(train_set) // config.batch_size)
    images, labels = torch.from_numpy(train_set.images), torch.from_numpy(train_set.labels)
    for epoch in range(config.epochs):
        train_one_epoch(model, None, optimizer, scheduler, images, labels, config, None, epoch, cpu,
                        resolve_precision(config.precision, cpu), progress=False)
    return model.eval(), val_set


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``python -m fer_lib ARGS`` in this process (no interpreter start, no second torch import):
    (exit status, stdout, stderr)."""
    from fer_lib.__main__ import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------------------
# the four layouts a user may hold, written from arrays, for the journey tests

LAYOUTS = ("homework-csv", "fer2013.csv", "image-ids", "class-folders")


def _save_face(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))


def write_layout(layout: str, folder: Path, train_images, train_labels, test_images, test_labels,
                 seed: int = 0, image_format: str = "") -> list:
    """Write a dataset in ``layout`` (rows and files in a shuffled order, ids as the user's files give them; image
    files as ``image_format``, default: JPEG for the course's layout, PNG for class folders); returns the id each
    test face must carry in predictions.csv, in the order of ``test_images``."""
    from fer_lib import CLASS_NAMES

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = lambda image: " ".join(map(str, image.ravel()))  # noqa: E731
    n_test = len(test_images)
    if layout == "homework-csv":  # ids that are not row numbers; the labels hidden
        ids = [int(i) for i in rng.choice(10_000, n_test, replace=False)]
        write_csv(folder / "train.csv.gz", "label,feature",
                  [f"{label},{pixels(image)}" for image, label in zip(train_images, train_labels)])
        write_csv(folder / "test.csv", "id,feature", [f"{i},{pixels(image)}" for i, image in zip(ids, test_images)])
        return ids
    if layout == "fer2013.csv":  # Kaggle's one file: test rows among the training rows; the id is the row
        usage = ["Training"] * len(train_images) + ["PublicTest", "PrivateTest"] * (n_test // 2) + (
            ["PublicTest"] if n_test % 2 else [])
        images = list(train_images) + list(test_images)
        labels = list(train_labels) + list(test_labels)
        order = rng.permutation(len(images))
        write_csv(folder / "fer2013.csv", "emotion,pixels,Usage",
                  [f"{labels[k]},{pixels(images[k])},{usage[k]}" for k in order])
        row_of = np.argsort(order)
        return [int(row_of[len(train_images) + t]) for t in range(n_test)]
    if layout == "image-ids":  # the course's: JPEG files, zero-padded names, plain integer ids in train.csv
        train_ids = rng.permutation(len(train_images))
        for image, face_id in zip(train_images, train_ids):
            _save_face(folder / "train_img" / f"{face_id:05d}.{image_format or 'jpg'}", image)
        write_csv(folder / "train.csv", "id,label", [f"{i},{label}" for i, label in zip(train_ids, train_labels)])
        ids = [int(i) for i in rng.permutation(n_test)]
        for image, face_id in zip(test_images, ids):
            _save_face(folder / "test_img" / f"{face_id:04d}.{image_format or 'jpg'}", image)
        return ids
    if layout == "class-folders":  # labelled test; the id is the file's path in test/
        for k, (image, label) in enumerate(zip(train_images, train_labels)):
            name = f"im{rng.integers(1e9)}_{k}.{image_format or 'png'}"
            _save_face(folder / "train" / CLASS_NAMES[label].lower() / name, image)
        ids = []
        for k, (image, label) in enumerate(zip(test_images, test_labels)):
            ids.append(f"{CLASS_NAMES[label].lower()}/t{k}.{image_format or 'png'}")
            _save_face(folder / "test" / ids[-1], image)
        return ids
    raise ValueError(layout)


@pytest.fixture(scope="session")
def shipped(tmp_path_factory):
    """A small model shipped as a committed report's model (``<root>/small/model``, face keys included), trained with
    the smoke recipe on synthetic faces whose test labels are known. Tests that set FER_MODELS=<root> get it served
    to any copy of its data, as report/fer2013/model serves copies of FER2013."""
    from fer_lib.data.layouts import load_dataset
    from fer_lib.training.runs import config_for
    from fer_lib.training.train import train

    root = tmp_path_factory.mktemp("shipped")
    write_synthetic_dataset(root / "original", n_train=240, n_test=30, seed=3)
    dataset = load_dataset(root / "original", cache_dir=root / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_dir = train(dataset, config_for("smoke"), root / "models" / "small" / "model", device="cpu",
                          progress=False)
    # the shipped FER2013 model's history has no per-epoch training loss scored like validation (that column is empty;
    # run.json's train_eval scores the kept weights): the small model ships in the same form, so that the pages take
    # the path they take for the real one
    history = pd.read_csv(model_dir / "history.csv")
    history.assign(train_eval_loss=float("nan")).to_csv(model_dir / "history.csv", index=False)
    return root / "models", model_dir, dataset
