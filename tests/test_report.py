"""The whole report as a user gets it from a copy of the shipped model's data: `python -m fer_lib report --data COPY`
(the faces re-encoded as JPEG, under other names and in another order, one missing and one the model never saw)
renders every page without training, scores the labelled test faces and predicts them under the user's file names;
the pages are self-contained and read answer-first."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fer_lib.report.build as report_mod
from fer_lib.report.build import NotebookFailed, build_report, notebook_paths
from fer_lib.report.context import load_context

from .conftest import run_cli, write_layout

# every code path of 04 at a fraction of its default sizes (a test build, not a report to read)
CHEAP = {"faces_per_class": 3, "sanity_per_class": 1, "smoothgrad_samples": 4, "ig_steps": 4}
MISSING = 5  # the training face the user's copy lacks


def unseen_face() -> np.ndarray:
    """A real face the model never saw (the synthetic faces are drawn alike, so a new one may match an old one)."""
    return np.asarray(Image.open(Path(__file__).parent / "data" / "fer2013_test_faces" / "0001.png").convert("L"))


@pytest.fixture(scope="module")
def served_copy(shipped, tmp_path_factory):
    """The user's copy: class folders of JPEG files, one training face missing and one added."""
    _, _, original = shipped
    keep = np.delete(np.arange(len(original.train)), MISSING)
    images = np.concatenate([original.train.images[keep], unseen_face()[None]])
    labels = np.concatenate([original.train.labels[keep], [3]])
    folder = tmp_path_factory.mktemp("copy") / "course"
    ids = write_layout("class-folders", folder, images, labels, original.test.images, original.test.labels,
                       image_format="jpg")
    return folder, ids


@pytest.fixture(scope="module")
def built(shipped, served_copy, tmp_path_factory):
    """`python -m fer_lib report` on the copy, in this process (no second interpreter and torch import; the command
    runs as its own process in test_concurrency.py): its stderr, the report folder, the runs folder."""
    from fer_lib.__main__ import main

    out, runs = tmp_path_factory.mktemp("report"), tmp_path_factory.mktemp("runs")
    params = [a for k, v in CHEAP.items() for a in ("--param", f"{k}={v}")]
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stderr(io.StringIO()) as err:
        env.setenv("FER_MODELS", str(shipped[0]))
        env.setenv("FER_CACHE", str(tmp_path_factory.mktemp("cache")))
        main(["report", "--data", str(served_copy[0]), "--profile", "smoke", "--out", str(out), "--runs", str(runs),
              "--device", "cpu", *params])  # a failure raises here: every test of the build reports it
    return err.getvalue(), out / "course-smoke", runs


def test_a_copy_renders_every_page_from_the_shipped_model_without_training(built):
    err, folder, runs = built
    assert "training the" not in err
    assert not [p for p in runs.iterdir() if (p / "weights.pt").exists()], "no run was trained"
    for nb in notebook_paths():
        page = (folder / f"{nb.stem}.html").read_text()
        assert "Traceback" not in page
        assert "In&nbsp;[" not in page, "code cells are hidden in the report"
        assert not re.search(r"<script[^>]+src=\"https?://", page), f"{nb.stem} loads a script from the network"
    assert 'src="data:image/png;base64' in (folder / "02_training_history.html").read_text(), "figures are embedded"


def test_the_copy_is_matched_face_by_face_and_its_labelled_test_is_scored(built, served_copy, shipped):
    _, folder, _ = built
    _, ids = served_copy
    _, model_dir, original = shipped
    metrics = json.loads((folder / "metrics.json").read_text())
    match = metrics["data_match"]
    assert match["how"] == "matched face by face" and match["model"] == "small"
    assert (match["exact"], match["near"], match["new"]) == (0, len(original.train) - 1, 1)  # JPEG: near
    predictions = pd.read_csv(folder / "predictions.csv")
    assert sorted(predictions["id"]) == sorted(ids), "one row per test face, under the user's file names"
    truth = dict(zip(ids, original.test.labels))
    right = np.mean([truth[i] == label for i, label in zip(predictions["id"], predictions["label"])])
    assert metrics["test"]["faces"] == len(original.test) and metrics["test"]["accuracy"] == pytest.approx(right)
    assert (folder / "model" / "weights.pt").read_bytes() == (model_dir / "weights.pt").read_bytes()


def test_kaggles_file_with_its_rows_in_another_order_is_served_too(shipped, tmp_path, capsys, monkeypatch):
    """Kaggle's one file, its training rows shuffled and its test rows labelled by Usage: every face is matched
    exactly, Q2 (the page that scores the shipped weights on the copy's own training faces) renders without
    training, the test faces are scored per Usage and predicted under their row ids."""
    models, _, original = shipped
    monkeypatch.setenv("FER_MODELS", str(models))
    order = np.random.default_rng(1).permutation(len(original.train))
    ids = write_layout("fer2013.csv", tmp_path / "mine", original.train.images[order], original.train.labels[order],
                       original.test.images, original.test.labels, seed=4)
    code, _, err = run_cli(capsys, "report", "--data", tmp_path / "mine" / "fer2013.csv", "--profile", "smoke",
                           "--out", tmp_path / "report", "--runs", tmp_path / "runs", "--device", "cpu",
                           "--notebooks", "02")
    assert code == 0, err[-3000:]
    assert "training the" not in err
    folder = next((tmp_path / "report").glob("*-smoke"))
    assert "Traceback" not in (folder / "02_training_history.html").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert (metrics["data_match"]["exact"], metrics["data_match"]["near"]) == (len(original.train), 0)
    assert sorted(pd.read_csv(folder / "predictions.csv")["id"]) == sorted(ids)
    assert metrics["test"]["faces"] == len(original.test)
    assert set(metrics["test"]["by_usage"]) == {"PublicTest", "PrivateTest"}


def served_context(served_copy, runs):
    """The context the CLI prepares for the served copy (the `built` fixture prepared its run and outputs)."""
    return load_context(str(served_copy[0]), "smoke", str(runs), "cpu")


def test_a_failing_notebook_leaves_the_previous_report_untouched(built, served_copy, shipped, tmp_path, monkeypatch):
    """The notebooks of a build share a kernel, but each starts from an empty namespace: the second one, using a
    name only the first one defined, fails as it would alone, and the report is left as it was."""
    _, folder, runs = built
    monkeypatch.setenv("FER_MODELS", str(shipped[0]))
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    broken = tmp_path / "notebooks"
    broken.mkdir()
    for name, source in (("01_defines", "leftover = 'boom'"), ("02_broken", "raise RuntimeError(leftover)")):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, broken / f"{name}.ipynb")
    monkeypatch.setattr(report_mod, "NOTEBOOK_DIR", broken)
    with pytest.raises(NotebookFailed, match="02_broken.ipynb failed"):
        build_report(served_context(served_copy, runs), folder.parent)
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert not list(folder.parent.glob(".*staging*")), "the staging folder is cleaned up"
    kept = folder.parent / ".failed" / folder.name / "02_broken.ipynb"
    assert kept.exists(), "the failed notebook is kept for debugging"
    assert "name 'leftover' is not defined" in kept.read_text(), "with its traceback"
    code = [c for c in nbformat.read(kept, as_version=4).cells if c.cell_type == "code"]
    assert code[0].execution_count == 1, "numbered as if it ran alone"


def test_ctrl_c_during_a_build_stops_it_and_keeps_the_report(built, served_copy, shipped, capsys, monkeypatch):
    """Ctrl-C while a notebook runs: exit status 130 with a line instead of a traceback, the report as it was."""
    import papermill

    _, folder, runs = built
    monkeypatch.setenv("FER_MODELS", str(shipped[0]))
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    code, _, err = run_cli(capsys, "report", "--data", served_copy[0], "--profile", "smoke", "--out", folder.parent,
                           "--runs", runs, "--device", "cpu", "--notebooks", "08")
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert not list(folder.parent.glob(".*staging*"))


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


def test_rebuilding_some_notebooks_keeps_the_other_pages(built, served_copy, shipped, monkeypatch):
    import papermill

    _, folder, runs = built
    monkeypatch.setenv("FER_MODELS", str(shipped[0]))
    before = {p.name: p.read_bytes() for p in folder.glob("*.html")}
    executed = []
    real_execute = papermill.execute_notebook

    def counting(source, *args, **kwargs):
        executed.append(source)
        return real_execute(source, *args, **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", counting)
    index = build_report(served_context(served_copy, runs), folder.parent, only=["08"])
    assert index == folder / "index.html"
    assert [p.rsplit("/", 1)[-1] for p in executed] == ["08_appendix_recipe.ipynb"], "only the selected notebook ran"
    after = {p.name: p.read_bytes() for p in folder.glob("*.html")}
    assert sorted(after) == sorted(before), "every page is still there"
    assert after["08_appendix_recipe.html"] != before["08_appendix_recipe.html"], "08 rendered again"
    assert after["01_model.html"] == before["01_model.html"], "the other pages kept as they were"
    for nb in notebook_paths():
        assert f'href="{nb.stem}.html"' in index.read_text()


def test_an_unknown_notebook_or_a_clashing_parameter_is_refused_before_anything_runs(tiny_dataset, tmp_path):
    from fer_lib import ConfigError

    ctx = load_context(str(tiny_dataset), "smoke", str(tmp_path / "runs"), "cpu")
    with pytest.raises(ConfigError, match="no notebook matches 99"):
        build_report(ctx, tmp_path / "report", only=["99"])
    with pytest.raises(ConfigError, match="cannot set profile"):
        build_report(ctx, tmp_path / "report", params={"profile": "full", "faces_per_class": 4})
    assert not (tmp_path / "runs").exists() and not (tmp_path / "report").exists(), "nothing trained or written"


def test_a_build_killed_while_swapping_its_report_in_leaves_one_for_the_next_build(tmp_path, monkeypatch):
    """The swap is two renames through a backup: killed between them, the next build (recover, under the lock)
    puts the old report back; done, the new one is whole and nothing is left beside it."""
    final, staging = tmp_path / "fer2013", tmp_path / ".fer2013.staging"
    for folder, marker in ((final, "old"), (staging, "new")):
        folder.mkdir()
        (folder / "index.html").write_text(marker)
    real_rename, calls = os.rename, []

    def dies_on_second_rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between "old -> backup" and "new -> final"
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", dies_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        report_mod.replace_directory(staging, final)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not final.exists()
    report_mod.recover(final)
    assert (final / "index.html").read_text() == "old" and not staging.exists(), "old report back, staging gone"
    staging.mkdir()
    (staging / "index.html").write_text("new")
    report_mod.replace_directory(staging, final)
    assert (final / "index.html").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["fer2013"]


def test_a_cell_tagged_evidence_folds_under_its_summary():
    """The report's template: a Markdown cell's text, or a code cell's outputs, inside <details> under the summary in
    the cell's metadata; an untagged cell and the code itself stay as they are (shown, and hidden)."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    def evidence(cell, summary):
        cell.metadata.update(tags=["evidence"], summary=summary)
        return cell

    shown = new_code_cell("print('answer')", outputs=[new_output("stream", name="stdout", text="the answer\n")])
    table = new_code_cell("show(table)", outputs=[new_output("display_data", data={"text/html": "<table>T</table>"})])
    nb = new_notebook(cells=[new_markdown_cell("# Q9. A question"), shown,
                             evidence(new_markdown_cell("How the $p$ value was **computed**"), "Method <1>"),
                             evidence(table, "The table"), evidence(new_code_cell("x = 1"), "Nothing shown")])
    metrics = {"dataset": "d", "synthetic": False, "git_commit": "abc", "data_files": {"train.csv": "0" * 64},
               "profile": "smoke", "run_key": "k", "built": "now"}
    page = report_mod.render_page(nb, [{"href": "09_q.html", "title": "Q9. A question"}], 0, metrics)
    folds = re.findall(r'<details class="fer-evidence"><summary>(.*?)</summary>(.*?)</details>', page, re.S)
    assert [summary for summary, _ in folds] == ["Method &lt;1&gt;", "The table"], "no fold without outputs"
    assert "<strong>computed</strong>" in folds[0][1] and "<math" in folds[0][1]
    assert "<table>T</table>" in folds[1][1]
    assert "the answer" in page.split("<details")[0], "an untagged cell is shown, above the folds"
    assert "print(" not in page and "x = 1" not in page, "no code"
    assert "<title>Q9. A question | FER report: d</title>" in page and "data sha256 000000000000" in page
    assert not re.search(r"<script[^>]+src=", page), "nothing loaded from elsewhere"


# ------------------------------------------------------------------------- what a reader sees

def _visible_text(fragment: str) -> str:
    """The words a reader sees without unfolding anything: no style, script, folded details, tables, formulas or
    the builder's navigation and provenance lines."""
    import html as html_mod

    for pattern in (r"<head\b.*?</head>", r'<div class="fer-(banner|prov)">.*?</div>',
                    r"<(style|script|details|table|math|nav)\b.*?</\1>"):
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


def test_a_notebook_opened_in_jupyterlab_on_a_copy_runs_top_to_bottom(served_copy, shipped, tmp_path, monkeypatch):
    """As a student runs it: the kernel in notebooks/, every parameter at its default but ``data`` (and the test
    recipe), no build around it."""
    import papermill

    monkeypatch.setenv("FER_MODELS", str(shipped[0]))
    (notebook,) = notebook_paths(["02"])
    papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), cwd=str(notebook.parent),
                               parameters={"data": str(served_copy[0]), "profile": "smoke"}, progress_bar=False,
                               kernel_name="python3")
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    answer = next(c for c in executed.cells if "answer" in c.metadata.get("tags", []))
    assert answer.outputs and "text/markdown" in answer.outputs[0]["data"]
