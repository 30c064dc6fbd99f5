"""Shared fixtures: small synthetic datasets written through the same CSV path as real data."""
from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest

from fer_lib.data.synthetic import write_synthetic_dataset

warnings.filterwarnings("ignore", message=".*ImageNet weights not found.*")


# the slowest files (a full report build, a trained model's explanations, two-process runs), run first so that
# parallel workers (`make test`: one per core, whole files each) finish together
SLOWEST_FIRST = ("test_report.py", "test_q4_saliency.py", "test_train.py", "test_concurrency.py", "test_integrity.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """300 training and 60 test faces of the embedded dataset (seeded)."""
    out = tmp_path_factory.mktemp("tiny")
    write_synthetic_dataset(out, n_train=300, n_test=60, seed=1)
    return out


# a run that takes seconds: two epochs on 96 faces, no weights file needed
TINY = dict(epochs=2, max_train=96, batch_size=32, weights="random", val_fraction=0.2)


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
    """A model trained briefly on synthetic faces (whose cue regions are known), with validation faces."""
    from fer_lib.data.layouts import load_dataset
    from fer_lib.training.runs import TrainConfig, load_trained, split_for
    from fer_lib.training.train import train

    folder = tmp_path_factory.mktemp("synthetic-train")
    write_synthetic_dataset(folder, n_train=1500, n_test=10, seed=5)
    dataset = load_dataset(folder)
    config = TrainConfig(epochs=4, max_train=1300, batch_size=64, lr=3e-3, weights="random", val_fraction=0.1)
    run = train(dataset, config, folder / "run", progress=False)
    model, _ = load_trained(run)
    return model, split_for(dataset, config)[1], run


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
