"""Nothing is lost when two runs meet or one is killed: locks on run folders and reports, a clean start for
--no-resume, resume checks on everything a run depends on, and a report swap with no moment without a report."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fer_lib import ConfigError
from fer_lib.core.io import exclusive_lock, replace_directory, restore_directory
from fer_lib.data.synthetic import write_synthetic_dataset
from fer_lib.training.runs import TrainConfig, is_complete, read_history, run_lock
from fer_lib.training.train import train

from .conftest import TINY, run_cli


@pytest.fixture(scope="module")
def few_faces(tmp_path_factory):
    """120 training and 12 test faces: what two processes contend for, at a third of the tiny dataset's cost."""
    out = tmp_path_factory.mktemp("few")
    write_synthetic_dataset(out, n_train=120, n_test=12, seed=2)
    return out

# (the two-build test early: `make test` hands this worker its next file while the last two tests of this one run)
# ------------------------------------------------------------------------- swapping a report in


def make_report_folder(path, marker: str):
    path.mkdir(parents=True)
    for name in ("index.html", "01_model.html", "metrics.json"):
        (path / name).write_text(marker)
    return path


@pytest.mark.parametrize("killed_at", [1, 2])
def test_a_swap_killed_at_any_step_leaves_a_whole_report(tmp_path, monkeypatch, killed_at):
    """Killed after the first rename (old report aside) the old report is whole and the next swap (or
    restore_directory) puts it back first; killed after the second, the new report is in place."""
    final = make_report_folder(tmp_path / "fer2013", "old")
    new = make_report_folder(tmp_path / ".fer2013.staging-1", "new")
    real_rename = os.rename
    calls = []

    def dies_after(src, dst):
        real_rename(src, dst)
        calls.append(src)
        if len(calls) == killed_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", dies_after)
    with pytest.raises(KeyboardInterrupt):
        replace_directory(new, final)
    monkeypatch.setattr(os, "rename", real_rename)
    previous = tmp_path / ".fer2013.previous"
    if killed_at == 1:
        assert not final.exists() and {p.read_text() for p in previous.iterdir()} == {"old"}
        restore_directory(final)
    assert {p.read_text() for p in final.iterdir()} == {"old" if killed_at == 1 else "new"}
    replace_directory(make_report_folder(tmp_path / ".fer2013.staging-2", "newer"), final)
    assert {p.read_text() for p in final.iterdir()} == {"newer"} and not previous.exists()


def test_two_builds_started_together_end_with_one_complete_report(few_faces, tmp_path):
    """Two `report` processes for the same data: the run is trained once, both finish, one report remains."""
    from fer_lib.report.build import notebook_paths, recover

    args = [sys.executable, "-m", "fer_lib", "report", "--data", str(few_faces), "--profile", "smoke",
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
    recover(folder)  # what the next build does first
    assert not [p for p in (tmp_path / "report").iterdir() if "staging" in p.name]


# ------------------------------------------------------------------------- training into one folder


def test_two_trainings_into_one_folder_train_once(few_faces, tmp_path):
    """Started together, one trains and the other waits, says whom for, and then finds the run finished."""
    args = [sys.executable, "-m", "fer_lib", "train", "--data", str(few_faces), "--out", str(tmp_path / "run"),
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


@pytest.mark.parametrize("change", ["training faces", "initial weights"])
def test_resume_refuses_a_checkpoint_of_another_run(tiny, tmp_path, monkeypatch, change):
    """The settings, the training faces and the initial weights actually used make the run: a checkpoint of
    another is refused (not mixed into this run) and the folder is left as it was."""
    import fer_lib.training.runs as runs_mod
    from fer_lib.data.layouts import Dataset

    run = train(tiny, TrainConfig(**TINY), tmp_path / "run", stop_after=1, progress=False)  # random init
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    data = tiny
    if change == "training faces":
        data = Dataset(tiny.name, tiny.layout, tiny.train.subset(list(range(len(tiny.train) - 1))), tiny.test)
    else:  # the same settings on paper, other initial weights found (an ImageNet file that appeared since)
        monkeypatch.setattr(runs_mod, "resolve_weights", lambda w, warn=True: (None, "sha256:" + "0" * 64))
    with pytest.raises(ConfigError, match="checkpoint of another run"):
        train(data, TrainConfig(**TINY), run, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
