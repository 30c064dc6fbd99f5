"""The import graph of fer_lib flows one way: each module imports only from its own layer or the ones below, and
nothing imports in a circle. The layers are the package's folders (DESIGN.md, "Layers")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fer_lib"

# lowest first; a module may import from its own layer and every layer before it
LAYERS = [
    ("core: package constants, I/O, hashing, locks, shared statistics", {"fer_lib", "core"}),
    ("data: layouts, duplicates, synthetic faces, landmarks and regions", {"data"}),
    ("model: network, preprocessing, inference, calibration", {"model"}),
    ("training: augmentation, the loop, run folders, predictions, benchmarks", {"training"}),
    ("analysis: one module per report question, its figures, photos", {"questions", "plots", "photos"}),
    ("report: notebook context, the builder, offline math", {"report"}),
    ("command line", {"fer_lib.__main__"}),
]
LAYER_OF = {folder: rank for rank, (_, folders) in enumerate(LAYERS) for folder in folders}


def module_name(path: Path) -> str:
    """fer_lib/questions/q2_history.py -> "fer_lib.questions.q2_history"."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The rank of a dotted module: the command line, the package root, or its folder below fer_lib."""
    if module in LAYER_OF:
        return LAYER_OF[module]
    return LAYER_OF[module.split(".")[1]]


def imports_of(path: Path, package: str, name: str = "") -> set[str]:
    """fer_lib modules imported anywhere in ``path`` (top level or inside functions), as dotted names; ``package``
    is the dotted package the file lives in (for relative imports), ``name`` the module's own dotted name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("fer_lib"):
                # "from fer_lib.data import layouts" imports a module; "from fer_lib import CLASS_NAMES" a constant
                submodules = {f"{base}.{a.name}" for a in node.names
                              if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").exists()}
                found |= submodules or {base}
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fer_lib"))
    return found - {name}


GRAPH = {module_name(p): imports_of(p, module_name(p.parent / "__init__.py"), module_name(p))
         for p in sorted(PACKAGE.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` as a path that ends where it starts, or None."""
    visiting, done = [], set()

    def visit(module):
        if module in done:
            return None
        if module in visiting:
            return visiting[visiting.index(module):] + [module]
        visiting.append(module)
        for target in sorted(graph.get(module, ())):
            if cycle := visit(target):
                return cycle
        visiting.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if cycle := visit(module):
            return cycle
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if layer_of(t) > layer_of(m))


def test_every_folder_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYER_OF), f"add new folders to LAYERS here and to DESIGN.md: {folders - set(LAYER_OF)}"
    assert not [p.name for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")], \
        "modules belong in a layer's folder, not at the package root"


def test_imports_point_down():
    assert not upward_imports(GRAPH)


def test_no_import_cycles():
    assert find_cycle(GRAPH) is None


def test_no_module_reaches_into_another_modules_private_names():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("fer_lib")):
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "__version__"]
    assert not offenders


def test_the_checkers_find_a_cycle_and_an_upward_import(tmp_path):
    # the checks above are only worth something if they can fail: a data module importing the report builder, and
    # a three-module cycle
    fake = tmp_path / "fake.py"
    fake.write_text("from fer_lib.report.build import build_report\nfrom .duplicates import find_duplicates\n"
                    "import fer_lib.core.io\n")
    found = imports_of(fake, "fer_lib.data")
    assert found == {"fer_lib.report.build", "fer_lib.data.duplicates", "fer_lib.core.io"}
    assert upward_imports({"fer_lib.data.fake": found}) == ["fer_lib.data.fake -> fer_lib.report.build"]
    cyclic = {"fer_lib.data.a": {"fer_lib.data.b"}, "fer_lib.data.b": {"fer_lib.data.c"},
              "fer_lib.data.c": {"fer_lib.data.a"}, "fer_lib.core.io": set()}
    assert find_cycle(cyclic) == ["fer_lib.data.a", "fer_lib.data.b", "fer_lib.data.c", "fer_lib.data.a"]
    assert find_cycle({k: v for k, v in cyclic.items() if k != "fer_lib.data.c"}) is None


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_every_module_opens_with_a_docstring(module):
    path = PACKAGE.parent / module.replace(".", "/")
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no one-line docstring"
