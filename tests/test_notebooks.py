"""Notebooks opened in JupyterLab behave as under `make report`: one set of parameter defaults, resolved by the
project's own code to the project's folders wherever the kernel starts, and a notebook never trains by surprise."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import nbformat
import pytest

import fer_lib.report.context as context
from fer_lib.report.build import notebook_paths

SHARED = ("data", "profile", "runs", "device")
CHEAP = {"weights": "random", "max_train": 64, "batch_size": 32}  # a run of a few seconds


def parameter_defaults(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {node.target.id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body
            if isinstance(node, ast.AnnAssign)}


def test_every_notebook_has_the_same_defaults_for_the_shared_parameters():
    defaults = {path.name: {k: parameter_defaults(path).get(k) for k in SHARED} for path in notebook_paths()}
    first = next(iter(defaults.values()))
    assert first == {"data": "", "profile": "", "runs": "", "device": "auto"}, "empty = the project's own folders"
    assert all(d == first for d in defaults.values()), defaults


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_dataset):
    """A project folder holding data/fer2013 (the tiny dataset's CSV files): the layout a student has."""
    root = tmp_path / "project"
    shutil.copytree(tiny_dataset, root / "data" / "fer2013")
    (root / "notebooks").mkdir()
    monkeypatch.setattr(context, "PROJECT_ROOT", root)
    monkeypatch.setattr(context, "DEFAULT_RUNS", root / "runs")
    monkeypatch.setattr(context, "SYNTHETIC_FOLDER", root / "data" / "synthetic")
    return root


def test_empty_defaults_resolve_to_the_project_folders_from_any_directory(project, monkeypatch):
    from fer_lib.training import train as train_mod

    defaults = {k: v for k, v in parameter_defaults(notebook_paths()[-1]).items() if k in SHARED}
    contexts = []
    for cwd in (project, project / "notebooks", project.parent):
        monkeypatch.chdir(cwd)
        contexts.append(context.load_context(**{**defaults, "profile": "smoke"}, **CHEAP))
    assert {c.data_path for c in contexts} == {project / "data" / "fer2013"}
    assert {c.runs_root for c in contexts} == {project / "runs"}
    assert len({(len(c.dataset.train), c.dataset.name) for c in contexts}) == 1

    # opened before any training: a clear refusal that says how to train and how long it takes, nothing trained
    with pytest.raises(context.NoRun) as refused:
        contexts[1].run_dir
    assert "make report DATA=" in str(refused.value) and "python -m fer_lib train" in str(refused.value)
    assert not (project / "runs").exists()

    # `make report` trains once from the project root; the notebook opened in notebooks/ then finds that run
    trained = contexts[0].prepare()
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("a notebook trained again"))
    assert contexts[1].run_dir == contexts[2].run_dir == trained and trained.parent == project / "runs"


def test_the_training_estimate_scales_a_recorded_run_on_this_cpu(project, monkeypatch):
    import json

    from fer_lib.core.io import cpu_model

    monkeypatch.setenv("FER_MODELS", str(project / "models"))  # no shipped model recorded on this CPU
    ctx = context.load_context(str(project / "data" / "fer2013"), "smoke", device="cpu", **CHEAP)
    seconds, basis = context.training_estimate(ctx)
    assert seconds > 0 and "recorded" not in basis  # nothing recorded yet: an estimate by kind of processor
    run = project / "runs" / "earlier"
    run.mkdir(parents=True)
    faces = 1000
    (run / "config.json").write_text(json.dumps({"config": {"input_size": 48}}))
    (run / "run.json").write_text(json.dumps({"cpu": cpu_model(), "device": "cpu", "epochs": 10, "train_faces": faces,
                                              "train_seconds": 100.0}))  # 0.01 s per face and epoch
    seconds, basis = context.training_estimate(ctx)
    expected = 0.01 * ctx.config.epochs * min(ctx.config.max_train, round(len(ctx.dataset.train) * 0.9))
    assert str(run) in basis and seconds == pytest.approx(expected, rel=0.02)
