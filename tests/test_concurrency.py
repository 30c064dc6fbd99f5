"""Nothing is lost when two runs meet or one is killed: locks on run folders and reports, a clean start for
--no-resume, resume checks on everything a run depends on, and a report swap with no moment without a report."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fer_lib import ConfigError
from fer_lib.core.io import exclusive_lock, recover_directory, replace_directory
from fer_lib.training.runs import TrainConfig, is_complete, read_history, run_lock
from fer_lib.training.train import train

from .conftest import TINY, run_cli

# ------------------------------------------------------------------------- training into one folder


def test_two_trainings_into_one_folder_train_once(tiny_dataset, tmp_path):
    """Started together, one trains and the other waits, says whom for, and then finds the run finished."""
    args = [sys.executable, "-m", "fer_lib", "train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"),
            "--profile", "smoke", "--epochs", "2", "--max-train", "64", "--weights", "random"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    waited = [err for _, _, err in results if "waiting for pid" in err]
    assert len(waited) == 1 and f"training into {tmp_path / 'run'}" in waited[0], "one waited, and said for whom"
    assert read_history(tmp_path / "run")["epoch"].tolist() == [1, 2], "trained once, not twice into one history"
    assert is_complete(tmp_path / "run")


def test_no_wait_refuses_while_another_process_trains(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    with exclusive_lock(run_lock(run), "training into it (this test)"):
        code, _, err = run_cli(capsys, "train", "--data", tiny_dataset, "--out", run, "--profile", "smoke",
                               "--weights", "random", "--no-wait")
    assert code == 2 and f"pid {os.getpid()}" in err and "--no-wait" in err
    assert not run.exists(), "nothing written"


# ------------------------------------------------------------------------- starting over and resuming


def test_no_resume_into_a_finished_run_removes_the_old_run_first(tiny, tmp_path):
    run = train(tiny, TrainConfig(**{**TINY, "epochs": 1}), tmp_path / "run", progress=False)
    assert is_complete(run) and (run / "weights.pt").exists()
    # stopped before its first epoch: the folder must not look finished, nor hold the old weights
    train(tiny, TrainConfig(**{**TINY, "lr": 1e-4}), run, resume=False, stop_after=0, progress=False)
    assert not is_complete(run)
    assert not (run / "weights.pt").exists() and not (run / "best.pt").exists()
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == 1e-4


def test_resume_refuses_a_checkpoint_of_other_training_faces(tiny, tmp_path):
    from fer_lib.data.layouts import Dataset

    run = train(tiny, TrainConfig(**TINY), tmp_path / "run", stop_after=1, progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    other = Dataset(tiny.name, tiny.layout, tiny.train.subset(list(range(len(tiny.train) - 1))), tiny.test)
    with pytest.raises(ConfigError, match="other training faces"):
        train(other, TrainConfig(**TINY), run, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_refuses_a_checkpoint_of_other_initial_weights(tiny, tmp_path):
    import torch

    from fer_lib.model.network import build_model

    weights = tmp_path / "init.pth"
    torch.save(build_model("random")[0].state_dict(), weights)
    run = train(tiny, TrainConfig(**TINY), tmp_path / "run", stop_after=1, progress=False)  # random init
    cfg = TrainConfig(**TINY)
    config_json = json.loads((run / "config.json").read_text())
    # same settings on paper ("weights" is part of the config), so point the recorded run at other weights
    config_json["weights_used"] = "sha256:" + "0" * 64
    (run / "config.json").write_text(json.dumps(config_json))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["weights_used"] = "sha256:" + "0" * 64
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(ConfigError, match="other initial weights"):
        train(tiny, cfg, run, progress=False)


# ------------------------------------------------------------------------- swapping a report in


def make_report_folder(path, marker: str):
    path.mkdir(parents=True)
    for name in ("index.html", "01_model.html", "metrics.json"):
        (path / name).write_text(marker)
    return path


def test_the_swap_leaves_a_complete_report_at_every_moment(tmp_path, monkeypatch):
    import fer_lib.core.io as io_mod

    final = make_report_folder(tmp_path / "fer2013", "old")
    new = make_report_folder(tmp_path / ".fer2013.staging-1", "new")
    seen = []
    real_rmtree = __import__("shutil").rmtree

    def crash_after_exchange(path, *a, **k):  # the process dies right after the swap, before cleaning up
        seen.append(sorted(p.name for p in final.iterdir()))
        raise KeyboardInterrupt

    monkeypatch.setattr("shutil.rmtree", crash_after_exchange)
    with pytest.raises(KeyboardInterrupt):
        replace_directory(new, final, tmp_path / ".fer2013.previous")
    monkeypatch.setattr("shutil.rmtree", real_rmtree)
    assert {p.read_text() for p in final.iterdir()} == {"new"}, "the new report is whole"
    assert seen == [["01_model.html", "index.html", "metrics.json"]]
    assert io_mod._exchange  # the atomic path was the one taken on this system


def test_a_build_killed_between_the_fallback_renames_is_recovered(tmp_path, monkeypatch):
    import fer_lib.core.io as io_mod

    final = make_report_folder(tmp_path / "fer2013", "old")
    new = make_report_folder(tmp_path / ".fer2013.staging-1", "new")
    backup = tmp_path / ".fer2013.previous"
    monkeypatch.setattr(io_mod, "_exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    real_rename = os.rename
    calls = []

    def dies_on_second_rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between "old -> backup" and "new -> final"
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", dies_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        replace_directory(new, final, backup)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not final.exists() and backup.is_dir()
    assert recover_directory(final, backup), "the next build puts the old report back"
    assert {p.read_text() for p in final.iterdir()} == {"old"}


def test_two_builds_started_together_end_with_one_complete_report(tiny_dataset, tmp_path):
    """Two `report` processes for the same data: the run is trained once, both finish, one report remains."""
    from fer_lib.report.build import _recover, notebook_paths

    args = [sys.executable, "-m", "fer_lib", "report", "--data", str(tiny_dataset), "--profile", "smoke",
            "--out", str(tmp_path / "report"), "--runs", str(tmp_path / "runs"), "--notebooks", "08",
            "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=900), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1 and is_complete(runs[0])
    assert len(read_history(runs[0])) == TrainConfig.from_dict(
        json.loads((runs[0] / "config.json").read_text())["config"]).epochs, "trained once"
    folder = tmp_path / "report" / "synthetic-smoke"
    assert (folder / "index.html").exists() and (folder / "08_appendix_recipe.html").exists()
    assert (folder / "model" / "weights.pt").exists() and (folder / "predictions.csv").exists()
    leftovers = [p.name for p in (tmp_path / "report").iterdir() if "staging" in p.name or "previous" in p.name]
    assert not leftovers, "no staging folder or backup left behind"
    assert len(notebook_paths(["08"])) == 1

    # a third build killed while it executes a notebook: the report is the old one, whole, and the next build
    # removes what the killed one left behind
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.startswith("executing"):
                break
    finally:
        proc.kill()
        proc.wait()
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    _recover(tmp_path / "report", folder.name)  # what the next build does first
    assert not [p for p in (tmp_path / "report").iterdir() if "staging" in p.name]
