"""Notebooks opened in JupyterLab behave as under `make report`: one set of parameter defaults, resolved the same
way wherever the kernel starts."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat

from fer_lib.report.build import notebook_paths


def parameter_defaults(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {node.target.id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body
            if isinstance(node, ast.AnnAssign)}


def test_every_notebook_has_the_same_defaults_for_the_shared_parameters():
    shared = ("data", "profile", "runs", "device")
    defaults = {path.name: {k: parameter_defaults(path).get(k) for k in shared} for path in notebook_paths()}
    first = next(iter(defaults.values()))
    assert first == {"data": "", "profile": "", "runs": "", "device": "auto"}, "empty = the project's own folders"
    assert all(d == first for d in defaults.values()), defaults


def test_empty_defaults_resolve_to_the_project_folders_from_any_directory(tmp_path, monkeypatch):
    import fer_lib.report.context as context

    seen = []
    monkeypatch.setattr(context, "load_dataset", lambda path: seen.append(path) or _FakeDataset())
    monkeypatch.setattr(context, "default_data_path", lambda: context.PROJECT_ROOT / "data" / "fer2013")
    for cwd in (context.PROJECT_ROOT, context.PROJECT_ROOT / "notebooks", tmp_path):
        monkeypatch.chdir(cwd)
        ctx = context.load_context(**{k: v for k, v in parameter_defaults(notebook_paths()[-1]).items()
                                      if k in ("data", "profile", "runs", "device")})
        assert ctx.runs_root == context.DEFAULT_RUNS == context.PROJECT_ROOT / "runs"
    assert len(set(seen)) == 1, "the same dataset wherever the notebook runs"


class _FakeDataset:
    name, synthetic = "fer2013", False
