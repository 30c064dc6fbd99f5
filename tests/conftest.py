"""Shared fixtures: small synthetic datasets written through the same CSV path as real data."""
from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest

from fer_lib.synthetic import write_synthetic_dataset

warnings.filterwarnings("ignore", message=".*ImageNet weights not found.*")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """300 training and 60 test faces of the embedded dataset (seeded)."""
    out = tmp_path_factory.mktemp("tiny")
    write_synthetic_dataset(out, n_train=300, n_test=60, seed=1)
    return out


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
