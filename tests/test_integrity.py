"""Correctness on real inputs: the course's image layout, run integrity, resuming a killed run, CLI exit
codes, and no global side effects."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fer_lib import ConfigError
from fer_lib.core.io import atomic_write
from fer_lib.data.layouts import DataError, load_dataset
from fer_lib.training.finish import score_predictions
from fer_lib.training.runs import TrainConfig, read_history, run_key
from fer_lib.training.train import train

from .conftest import TINY, pixel_row, run_cli, write_csv

# ------------------------------------------------------------------------- the course's image layout


def save_faces(folder, names, rng):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(folder / name)


@pytest.mark.parametrize("id_text", [lambda i: str(i), lambda i: f"{i:05d}.jpg"])
def test_course_layout_with_zero_padded_image_names(tmp_path, id_text):
    rng = np.random.default_rng(0)
    save_faces(tmp_path / "train_img", [f"{i:05d}.jpg" for i in range(12)], rng)  # 5 digits, as the course ships
    save_faces(tmp_path / "test_img", [f"{i:04d}.jpg" for i in range(5)], rng)  # 4 digits
    (tmp_path / "train.csv").write_text("id,label\n" + "".join(f"{id_text(i)},{i % 7}\n" for i in range(12)))
    dataset = load_dataset(tmp_path)
    assert dataset.layout == "image-ids" and len(dataset.train) == 12
    assert dataset.train.ids.tolist() == list(range(12)) and dataset.train.labels.tolist() == [i % 7 for i in range(12)]
    expected = np.asarray(Image.open(tmp_path / "train_img" / "00007.jpg").convert("L"))
    np.testing.assert_array_equal(dataset.train.images[7], expected)
    assert dataset.test.ids.tolist() == list(range(5))


@pytest.mark.parametrize("rows, message", [
    (["0,1", "1,2,3"], r"train.csv, line 3: expected 2 comma-separated fields"),
    (["0,1", "1,happy"], r"train.csv, line 3: label 'happy' is not an integer"),
    (["0,1", "abc,2"], r"train.csv, line 3: id 'abc' is neither an integer nor an image name"),
    (["0,1", "9,2"], r"train.csv, line 3: no image for id 9"),
])
def test_malformed_id_label_rows_name_the_line(tmp_path, rows, message):
    save_faces(tmp_path / "train_img", ["00000.jpg", "00001.jpg"], np.random.default_rng(1))
    (tmp_path / "train.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path)


def test_non_numeric_image_names_are_refused(tmp_path):
    save_faces(tmp_path / "train_img", ["00000.jpg", "face_a.jpg"], np.random.default_rng(2))
    (tmp_path / "train.csv").write_text("id,label\n0,1\n")
    with pytest.raises(DataError, match=r"face_a.jpg: image name should be the face id"):
        load_dataset(tmp_path)


def test_unknown_usage_in_fer2013_csv(tmp_path):
    rng = np.random.default_rng(3)
    rows = [f"1,{pixel_row(rng)},Training", f"2,{pixel_row(rng)},Validation"]
    write_csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage", rows)
    with pytest.raises(DataError, match=r"line 3: Usage 'Validation'"):
        load_dataset(tmp_path)


def test_a_training_file_without_labels_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    write_csv(tmp_path / "train.csv", "id,feature", [f"{i},{pixel_row(rng)}" for i in range(3)])
    with pytest.raises(DataError, match=r"train.csv: a training file needs a label column"):
        load_dataset(tmp_path)


def test_predictions_whose_ids_differ_from_the_labels_are_refused(tmp_path):
    (tmp_path / "truth.csv").write_text("id,label\n0,1\n1,2\n2,3\n")
    (tmp_path / "pred.csv").write_text("id,label\n0,1\n1,2\n7,3\n")
    with pytest.raises(DataError, match=r"pred.csv: .*id"):
        score_predictions(tmp_path / "pred.csv", tmp_path / "truth.csv")


def test_atomic_write_interrupted_midway_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def write_then_die(tmp):
        tmp.write_text("half of the new")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write_then_die)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"], "no temporary file left behind"
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and oct(target.stat().st_mode & 0o777) == oct(0o644)


# ------------------------------------------------------------------------- run integrity


def test_run_key_follows_the_weights_actually_used(tiny, tmp_path, monkeypatch):
    import fer_lib.model.network as model_mod

    monkeypatch.setattr(model_mod, "imagenet_weights_path", lambda: tmp_path / "hub" / "resnet18.pth")
    cfg = TrainConfig(**{**TINY, "weights": "imagenet"})
    missing = run_key(tiny, cfg)
    assert missing == run_key(tiny, TrainConfig(**{**TINY, "weights": "random"})), \
        "a fallback to random init is the same run as asking for random init"
    from torchvision.models import resnet18

    (tmp_path / "hub").mkdir()
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "hub" / "resnet18.pth")
    present = run_key(tiny, cfg)
    assert present != missing, "the run is not reused once the real weights appear"
    torch.manual_seed(1)
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "hub" / "resnet18.pth")
    assert run_key(tiny, cfg) != present, "other weights, another run"


def test_a_missing_weights_path_is_an_error_and_writes_nothing(tiny, tmp_path):
    with pytest.raises(ConfigError, match=r"no_such.pth: weights file not found"):
        train(tiny, TrainConfig(**{**TINY, "weights": str(tmp_path / "no_such.pth")}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_refused_resume_leaves_the_run_as_it_was(tiny, tmp_path):
    run = train(tiny, TrainConfig(**TINY), tmp_path / "run", stop_after=1, progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ConfigError, match="checkpoint of another run"):
        train(tiny, TrainConfig(**{**TINY, "lr": 1e-4}), run, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before, "config.json still matches the weights"


def test_no_resume_starts_over(tiny, tmp_path):
    run = train(tiny, TrainConfig(**TINY), tmp_path / "run", stop_after=1, progress=False)
    other = TrainConfig(**{**TINY, "lr": 1e-4, "epochs": 1})
    train(tiny, other, run, resume=False, progress=False)  # no refusal: the old checkpoint is replaced
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == 1e-4
    assert read_history(run)["epoch"].tolist() == [1] and (run / "run.json").exists()


def test_a_partial_run_in_the_cache_is_resumed_not_restarted(tiny_dataset, tmp_path):
    from fer_lib.report.context import load_context

    ctx = load_context(str(tiny_dataset), "smoke", str(tmp_path), "cpu", retrain=True, **TINY)
    partial = ctx.own_run_dir
    train(ctx.dataset, ctx.config, partial, stop_after=1, progress=False)
    first_epoch = read_history(partial).iloc[0].drop("seconds")
    assert ctx.prepare() == partial
    history = read_history(partial)
    assert history["epoch"].tolist() == [1, 2]
    pd.testing.assert_series_equal(history.iloc[0].drop("seconds"), first_epoch)


def test_a_killed_training_process_resumes_through_the_cli(tiny_dataset, tmp_path, capsys):
    args = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--epochs", "3",
            "--max-train", "64", "--batch-size", "16", "--weights", "random", "--profile", "smoke",
            "--no-wait"]  # the resume is refused if the killed process's lock were still held
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fer_lib", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    deadline = time.time() + 600  # generous: a loaded machine may take minutes for one tiny epoch
    while not (tmp_path / "run" / "history.csv").exists():  # killed once the first epoch is checkpointed
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode() if proc.poll() else "slow"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_history(tmp_path / "run"))
    assert done < 3 and not (tmp_path / "run" / "run.json").exists()
    code, out, err = run_cli(capsys, *args)  # the resume itself runs in this process
    assert code == 0, err
    assert f"resuming {tmp_path / 'run'} from its checkpoint at epoch {done + 1}/3" in err
    assert read_history(tmp_path / "run")["epoch"].tolist() == [1, 2, 3]


# ------------------------------------------------------------------------- CLI exit codes


@pytest.mark.parametrize("args, message", [
    (["report", "--profile", "nonsense"], "profile must be one of"),
    (["report", "--notebooks", "99"], "no notebook matches 99"),
    (["predict", "--run", "RUN", "--data", "DATA"], "has no test split"),
    (["train", "--data", "DATA", "--weights", "missing.pth", "--profile", "smoke"], "weights file not found"),
])
def test_cli_errors_exit_2_with_one_line(tiny_dataset, tmp_path, args, message, capsys):
    no_test = tmp_path / "only_train"
    no_test.mkdir()
    (no_test / "train.csv").write_bytes((tiny_dataset / "train.csv").read_bytes())
    args = [str(no_test) if a == "DATA" else str(tmp_path) if a == "RUN" else a for a in args]
    extra = ["--data", str(tiny_dataset)] if args[0] == "report" else []
    code, _, err = run_cli(capsys, *args, *extra)
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    from fer_lib import __main__ as cli_main

    def broken(args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(cli_main, "cmd_score", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli_main.main(["score", "--pred", "p.csv", "--labels", "l.csv"])


# ------------------------------------------------------------------------- no global side effects


def test_importing_the_library_leaves_the_umask_and_the_warning_filters_alone():
    """A fresh interpreter (this one has imported everything already): no process-wide state changes on import."""
    code = ("import os, warnings, torch, scipy.stats, pandas; os.umask(0o077); before = list(warnings.filters); "
            "import fer_lib.data.layouts, fer_lib.training.train, fer_lib.report.build; "
            "import fer_lib.questions.q4_saliency, fer_lib.data.regions; "
            "assert warnings.filters == before, 'warning filters changed'; print(oct(os.umask(0)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "0o77", result.stderr


def test_training_leaves_the_global_rng_alone(tiny, tmp_path):
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    train(tiny, TrainConfig(**{**TINY, "epochs": 1}), tmp_path / "run", progress=False)
    torch.testing.assert_close(torch.rand(3), expected)


def test_a_shipped_model_with_the_same_key_is_found_instead_of_training(tiny, tmp_path):
    import shutil

    from fer_lib.training.runs import RUN_FILES, find_run

    cfg = TrainConfig(**{**TINY, "epochs": 1})
    trained = train(tiny, cfg, tmp_path / "trained", progress=False)
    shipped = tmp_path / "report" / "model"
    shipped.mkdir(parents=True)
    for name in RUN_FILES:  # what a report ships: no checkpoint, no best.pt
        shutil.copy2(trained / name, shipped / name)
    assert find_run(tiny, cfg, tmp_path / "runs", [shipped]) == shipped
    assert find_run(tiny, TrainConfig(**{**TINY, "epochs": 1, "seed": 3}), tmp_path / "runs", [shipped]) is None
