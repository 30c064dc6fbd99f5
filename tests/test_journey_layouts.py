"""A user's journey on each layout they may hold: `python -m fer_lib train`, then `python -m fer_lib report`, once
with test faces none of which has a training copy and once with some that do. What they get is checked: the exit
codes, the pages, predictions.csv with their own ids, test_duplicates.csv naming exactly the copies, and where the
test faces carry labels, the score in metrics.json."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fer_lib.data.duplicates import find_duplicates
from fer_lib.data.synthetic import make_faces
from fer_lib.report.build import notebook_paths

from .conftest import LAYOUTS, run_cli, write_layout

N_TRAIN, N_TEST = 160, 24
COPIED = [3, 17, 42, 99]  # the training faces that the "copies" variant puts among its test faces
# the page that reads what differs between layouts: Q2 the test faces' copies (where none has one, an empty
# selection), Q3 the test labels (scored where the layout carries them); the whole report is rendered by the
# served-copy journey (test_report.py)
PAGE = {False: "02", True: "03"}


@pytest.fixture(scope="module")
def faces():
    """Synthetic training faces, and test faces of another seed that are not copies of any of them."""
    train_images, train_labels = make_faces(N_TRAIN, seed=11)
    candidates, candidate_labels = make_faces(2 * N_TEST, seed=12)
    unseen = find_duplicates(train_images, candidates).test_copy == ""
    return train_images, train_labels, candidates[unseen][:N_TEST], candidate_labels[unseen][:N_TEST]


@pytest.mark.parametrize("copies", [False, True], ids=["all-test-faces-new", "some-test-faces-copied"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_then_report(layout, copies, faces, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FER_MODELS", str(tmp_path / "no-shipped-models"))
    train_images, train_labels, test_images, test_labels = faces
    n_copied = len(COPIED) if copies else 0
    if copies:  # the last test faces are copies of training faces (pixel for pixel, before any re-encoding)
        test_images = np.concatenate([test_images[:N_TEST - n_copied], train_images[COPIED]])
        test_labels = np.concatenate([test_labels[:N_TEST - n_copied], train_labels[COPIED]])
    data = tmp_path / "mydata"
    ids = write_layout(layout, data, train_images, train_labels, test_images, test_labels)
    if layout == "fer2013.csv":
        data = data / "fer2013.csv"  # a user may name the file itself
    common = ("--data", data, "--profile", "smoke", "--runs", tmp_path / "runs", "--device", "cpu")

    code, out, err = run_cli(capsys, "train", *common)
    assert code == 0, err
    assert "run: " in out

    code, out, err = run_cli(capsys, "report", *common, "--out", tmp_path / "report", "--notebooks", PAGE[copies])
    assert code == 0, err
    folder = next((tmp_path / "report").glob("*-smoke"))
    assert "training the smoke recipe" not in err, "the report reuses the run that `train` made"
    (page,) = notebook_paths([PAGE[copies]])
    assert "Traceback" not in (folder / f"{page.stem}.html").read_text()
    assert f'href="{page.stem}.html"' in (folder / "index.html").read_text()

    predictions = pd.read_csv(folder / "predictions.csv", dtype={"id": str})
    assert sorted(predictions["id"]) == sorted(map(str, ids)), "one row per test face, under the user's own id"
    assert predictions["label"].between(0, 6).all()
    listed = pd.read_csv(folder / "test_duplicates.csv", dtype={"id": str})
    assert sorted(listed["id"]) == sorted(map(str, ids[N_TEST - n_copied:])), "exactly the copied test faces"
    assert set(listed["copy"]) <= {"exact"}

    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["duplicates"]["test_faces"] == N_TEST and metrics["duplicates"]["rows"] == n_copied
    if layout in ("fer2013.csv", "class-folders"):  # labelled test faces are scored
        test = metrics["test"]
        truth = dict(zip(map(str, ids), test_labels))
        right = [truth[i] == label for i, label in zip(predictions["id"], predictions["label"])]
        assert test["faces"] == N_TEST and test["accuracy"] == pytest.approx(np.mean(right))
        unseen = [r for i, r in zip(predictions["id"], right) if i not in set(listed["id"])]
        assert test["without_training_copy"] == pytest.approx(np.mean(unseen))
        if layout == "fer2013.csv":
            assert set(test["by_usage"]) == {"PublicTest", "PrivateTest"}
    else:  # hidden labels: predictions only, no test result anywhere
        assert "test" not in metrics
