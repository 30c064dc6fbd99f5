"""The import graph of fer_lib flows one way: each module imports only from its own layer or the ones below,
and nothing imports in a circle. The layers are those of the README's layout section."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fer_lib"

# lowest first; a module may import from its own layer and every layer before it
LAYERS = [
    ("core: package constants, I/O, hashing, locks, parsing", {"__init__", "io", "fastcsv", "mathrender"}),
    ("data: reading, duplicates, synthetic faces, landmarks", {"data", "duplicates", "synthetic", "landmarks"}),
    ("model: network, preprocessing, augmentation", {"model", "augment"}),
    ("inference: logits, test-time views, calibration", {"inference", "calibration"}),
    ("runs: configuration, run folders, cache keys", {"runs"}),
    ("training: the loop, train-or-reuse", {"train"}),
    ("analysis: one module or more per report question, predictions, photos, benchmarks, plots",
     {"evaluate", "votes", "explain", "regions", "filters", "face_attributes", "mathcheck", "photos", "predict",
      "bench", "plots"}),
    ("context: what a notebook needs, resolved one way", {"context"}),
    ("report building", {"report"}),
    ("command line", {"__main__"}),
]
LAYER_OF = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}


def imports_of(path: Path) -> set[str]:
    """fer_lib modules imported anywhere in ``path`` (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x (a module) or a package constant
                found.update(a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists())
                found.add("__init__")
            elif node.module and node.module.startswith("fer_lib"):
                found.add(node.module.split(".")[1] if "." in node.module else "__init__")
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("fer_lib."))
    return found - {path.stem}


GRAPH = {p.stem: imports_of(p) for p in sorted(PACKAGE.glob("*.py"))}


def test_every_module_has_a_layer():
    assert not set(GRAPH) - set(LAYER_OF), "add new modules to LAYERS here and to the README's layout section"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    up = sorted(m for m in GRAPH[module] if LAYER_OF.get(m, -1) > LAYER_OF.get(module, -1))
    assert not up, f"fer_lib/{module}.py ({LAYERS[LAYER_OF[module]][0]}) imports from a higher layer: {up}"


def test_no_import_cycles():
    visiting, done = [], set()

    def visit(module):
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(module):] + [module])}"
        visiting.append(module)
        for target in GRAPH.get(module, ()):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in GRAPH:
        visit(module)


def test_no_module_reaches_into_another_modules_private_names():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "__version__"]
    assert not offenders


def test_the_layer_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    # the checks above are only worth something if they can fail: a module importing report from data
    fake = tmp_path / "data.py"
    fake.write_text("from .report import build_report\nfrom . import io\n")
    assert imports_of(fake) == {"report", "io", "__init__"}
    assert LAYER_OF["report"] > LAYER_OF["data"]
