"""`make report` end to end on a small synthetic set: every notebook executes, pages are self-contained."""
from __future__ import annotations

import json
import re

import nbformat
import pytest

import fer_lib.report.build as report_mod
from fer_lib.data.synthetic import write_synthetic_dataset
from fer_lib.report.build import build_report, notebook_paths


@pytest.fixture(scope="module")
def synthetic_small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "synthetic"  # the name marks it as the demo dataset
    write_synthetic_dataset(folder, n_train=280, n_test=30, seed=2)
    return folder


# every code path of 04 and 05 at a fraction of their default sizes (a test build, not a report to read)
CHEAP = {"ascent_steps": 8, "n_shown": 4, "faithfulness_faces": 8}


@pytest.fixture(scope="module")
def built(synthetic_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    runs = tmp_path_factory.mktemp("runs")
    code = build_report(data=str(synthetic_small), profile="smoke", out_root=out, runs_root=runs, device="cpu",
                        notebook_params=CHEAP)
    return code, out / "synthetic-smoke", runs  # a non-default profile gets its own folder


def test_source_notebooks_are_committed_clean_with_a_parameters_cell():
    for path in notebook_paths():
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path} has outputs"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path} needs exactly one cell tagged 'parameters'"


def test_every_notebook_executes_and_renders(built):
    code, folder, _ = built
    assert code == 0
    for nb in notebook_paths():
        page = (folder / f"{nb.stem}.html").read_text()
        assert "Traceback" not in page
        assert "In&nbsp;[" not in page, "code cells are hidden in the report"


def test_pages_embed_images_and_need_no_network(built):
    _, folder, _ = built
    page = (folder / "02_training_history.html").read_text()
    assert 'src="data:image/png;base64' in page
    for html_file in folder.glob("*.html"):
        text = html_file.read_text()
        assert not re.search(r"<script[^>]+src=\"https?://", text), f"{html_file.name} loads a script from the network"


def test_synthetic_report_says_so_on_every_page(built):
    _, folder, _ = built
    for html_file in folder.glob("*.html"):
        assert "SYNTHETIC DEMO DATA" in html_file.read_text(), html_file.name


def test_index_metrics_and_predictions(built, synthetic_small):
    _, folder, _ = built
    index = (folder / "index.html").read_text()
    for nb in notebook_paths():
        assert f'href="{nb.stem}.html"' in index
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["data_files"]) == {"train.csv", "test.csv", "test_labels.csv"}
    # the demo's test labels are known, so its test set is scored (a hidden-label copy gets no "test" entry)
    assert metrics["test"]["faces"] == 30 and 0 <= metrics["test"]["accuracy"] <= 1
    assert metrics["data_match"]["how"] == "trained on these faces"
    assert f"Test accuracy: {metrics['test']['accuracy']:.1%}" in index
    assert all(len(h) == 64 for h in metrics["data_files"].values())
    assert metrics["config"]["config"]["epochs"] == 1 and metrics["libraries"]["torch"]
    assert metrics["run"]["device"] == "cpu" and "total" in metrics["wall_seconds"]
    lines = (folder / "predictions.csv").read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 31


def test_a_failing_notebook_leaves_the_previous_report_untouched(built, synthetic_small, tmp_path, monkeypatch):
    _, folder, runs = built
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    broken = tmp_path / "notebooks"
    broken.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise RuntimeError('boom')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, broken / "01_broken.ipynb")
    monkeypatch.setattr(report_mod, "NOTEBOOK_DIR", broken)
    code = build_report(data=str(synthetic_small), profile="smoke", out_root=folder.parent, runs_root=runs,
                        device="cpu")
    assert code == 1
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before
    assert not list(folder.parent.glob(".*staging*")), "the staging folder is cleaned up"
    kept = folder.parent / ".failed" / folder.name / "01_broken.ipynb"
    assert kept.exists(), "the failed notebook is kept for debugging"
    assert "boom" in kept.read_text(), "with its traceback"


def test_pages_have_titles_navigation_and_provenance(built):
    _, folder, _ = built
    stems = [nb.stem for nb in notebook_paths()]
    for i, stem in enumerate(stems):
        page = (folder / f"{stem}.html").read_text()
        title = re.search(r"<title>(.*?)</title>", page).group(1)
        assert title.startswith(report_mod.title_of(notebook_paths()[i])), title
        assert 'href="index.html"' in page
        if i > 0:
            assert f'href="{stems[i - 1]}.html"' in page
        if i + 1 < len(stems):
            assert f'href="{stems[i + 1]}.html"' in page
        assert "data sha256" in page and "profile smoke" in page


def test_index_gives_each_answer_and_ships_the_model(built):
    _, folder, _ = built
    answers = json.loads((folder / report_mod.ANSWERS_FILE).read_text())
    index = (folder / "index.html").read_text()
    for nb in notebook_paths():
        tags = [t for c in nbformat.read(nb, as_version=4).cells for t in c.metadata.get("tags", [])]
        if "answer" in tags:
            assert answers[nb.stem]["answer"], f"{nb.stem} tags an answer cell but produced no answer"
        if "key-figure" in tags:
            assert answers[nb.stem]["thumbnail"].startswith("data:image/png;base64,")
            assert answers[nb.stem]["thumbnail"] in index
    assert "random initialisation" in index  # the tests never have ImageNet weights
    model = folder / report_mod.MODEL_FOLDER
    metrics = json.loads((folder / "metrics.json").read_text())
    import hashlib
    assert hashlib.sha256((model / "weights.pt").read_bytes()).hexdigest() == metrics["run"]["weights_sha256"]
    assert json.loads((model / "config.json").read_text())["run_key"] == metrics["run_key"]


def test_rebuilding_some_notebooks_keeps_the_other_pages(built, synthetic_small, monkeypatch):
    import papermill

    _, folder, runs = built
    before = sorted(p.name for p in folder.glob("*.html"))
    executed = []
    real_execute = papermill.execute_notebook

    def counting(source, *args, **kwargs):
        executed.append(source)
        return real_execute(source, *args, **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", counting)
    code = build_report(data=str(synthetic_small), profile="smoke", out_root=folder.parent, runs_root=runs,
                        device="cpu", notebooks=["08"])
    assert code == 0
    assert [p.rsplit("/", 1)[-1] for p in executed] == ["08_appendix_recipe.ipynb"], "only the selected notebook ran"
    assert sorted(p.name for p in folder.glob("*.html")) == before, "every page is still there"
    index = (folder / "index.html").read_text()
    for nb in notebook_paths():
        assert f'href="{nb.stem}.html"' in index


def test_an_unknown_notebook_or_a_clashing_parameter_is_refused_before_anything_runs(synthetic_small, tmp_path):
    from fer_lib import ConfigError

    with pytest.raises(ConfigError, match="no notebook matches 99"):
        build_report(data=str(synthetic_small), profile="smoke", out_root=tmp_path, runs_root=tmp_path,
                     notebooks=["99"])
    with pytest.raises(ConfigError, match="cannot set profile"):
        build_report(data=str(synthetic_small), profile="smoke", out_root=tmp_path, runs_root=tmp_path,
                     notebook_params={"profile": "full", "ascent_steps": 4})
    assert not list(tmp_path.iterdir()), "nothing trained or written"


# ------------------------------------------------------------------------- what a reader sees

def _visible_text(fragment: str) -> str:
    """The words a reader sees without unfolding anything: no style, script, folded details, tables, formulas or
    the builder's navigation and provenance lines."""
    import html as html_mod

    for pattern in (r"<head\b.*?</head>", r"<!--fer-top-->.*?<!--/fer-top-->",
                    r"<!--fer-bottom-->.*?<!--/fer-bottom-->", r"<(style|script|details|table|math)\b.*?</\1>"):
        fragment = re.sub(pattern, " ", fragment, flags=re.S | re.I)
    return " ".join(html_mod.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def _words(text: str) -> list[str]:
    return [w for w in text.split() if re.search(r"\w", w)]


def reading_problems(folder) -> list[str]:
    """What a reader would trip over in a rendered report: each page must show its title (and at most a line on
    the question), the data notice, then its answer; no "nan"/"None" in its text; an alt text on every image; at
    most ~650 visible words; each index answer at most 70 words."""
    import mistune

    from fer_lib.report.context import SYNTHETIC_NOTICE

    problems = []
    answers = json.loads((folder / report_mod.ANSWERS_FILE).read_text())
    for name in [f"{nb.stem}.html" for nb in notebook_paths()] + ["index.html"]:
        page = (folder / name).read_text()
        for img in re.findall(r"<img\b[^>]*>", page):
            if not re.search(r'\balt="[^"]*\w[^"]*"', img):
                problems.append(f"{name}: an image without alt text: {img[:100]}")
        text = _visible_text(page)
        for found in re.finditer(r"\b(nan|NaN|None)\b(?! of)", text):  # "None of the 512 filters ..." is English
            problems.append(f"{name}: {text[max(0, found.start() - 60):found.end() + 60]!r}")
        if name == "index.html":
            continue
        if len(_words(text)) > 650:
            problems.append(f"{name}: {len(_words(text))} visible words")
        entry = answers[name[:-5]]
        formulas = re.compile(r"\$\$.*?\$\$|\$[^$]*\$", re.S)  # one word each; pages show them as MathML
        words = _words(_visible_text(mistune.html(formulas.sub(" ", entry["answer"]))))
        count = len(words) + len(formulas.findall(entry["answer"]))
        if not 0 < count <= 70:
            problems.append(f"{name}: the index answer has {count} words")
            continue
        tokens = _words(text)
        title = _words(entry["title"])
        start = next(i for i in range(len(tokens)) if tokens[i:i + len(title)] == title) + len(title)
        opening = words[:4]
        at = next((i for i in range(start, len(tokens)) if tokens[i:i + len(opening)] == opening), -1)
        before = [w for w in tokens[start:at] if w not in _words(SYNTHETIC_NOTICE)]
        if at < 0:
            problems.append(f"{name}: answer not found on the page: {' '.join(opening)!r}")
        elif len(before) > 45:
            problems.append(f"{name}: {len(before)} words before the answer: {' '.join(before)[:200]!r}")
    return problems


def test_every_page_opens_with_its_answer_and_reads_clean(built):
    _, folder, _ = built
    assert reading_problems(folder) == []


def test_the_recipe_table_has_no_nan_and_no_test_set_claim():
    import numpy as np
    import pandas as pd

    from fer_lib.questions.appendix import recipe_table

    table = pd.DataFrame({"choice": ["input size", "test-time views"], "compared with": [np.nan, "AdamW"],
                          "result": ["68.1% vs 69.9% validation; the 96 px run scored lower on the hidden test",
                                     "68.2% with flip test-time augmentation"]})
    shown, dropped = recipe_table(table)
    assert dropped == 1 and shown.loc[0, "result"] == "68.1% vs 69.9% validation"
    assert shown.loc[1].tolist()[::2] == ["test-time views", "68.2% with flip test-time augmentation"], "kept"
    assert shown.loc[0, "compared with"] == "—" and not shown.isna().any().any()
    assert ">nan<" not in shown.to_html().lower()


def test_the_appendix_reads_the_speed_ratios_of_its_precision_row():
    import pandas as pd
    import pytest

    from fer_lib.questions.appendix import speedups

    table = pd.DataFrame({"choice": ["epochs", "precision (speed)"],
                          "result": ["60 vs 40", "bf16 vs fp32 img/s: 48 px 383 vs 248; 72 px 215 vs 141"]})
    assert speedups(table) == pytest.approx([383 / 248, 215 / 141])
    assert speedups(table.iloc[:1]).size == 0
