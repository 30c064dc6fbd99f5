"""`make report`: train once, execute the notebooks with papermill, render HTML, write index and provenance.

The builder only renders: the calibration, the test predictions and the list of test faces with a training copy
belong to the finished run (training.predict writes them into its folder) and are copied from there.

Everything is built in a staging folder next to ``report/<dataset>/`` and swapped in only when every
notebook succeeded, so a failure leaves the previous report untouched (the failed notebook, with its
traceback, is kept in ``report/.failed/``). A rebuild of some notebooks keeps the other pages of the same run.
Each notebook hands the index its answer through two cell tags: ``answer`` (a short computed Markdown
answer) and ``key-figure`` (the cell whose first image is the page's key figure).
"""
from __future__ import annotations

import html
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from fer_lib import ConfigError
from fer_lib.core.io import exclusive_lock, file_sha256, recover_directory, replace_directory
from fer_lib.data.face_keys import KEYS_FILE
from fer_lib.report.context import PROJECT_ROOT, SYNTHETIC_NOTICE, Context, load_context, shipped_root
from fer_lib.training.shipped import model_name

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
LIBRARIES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "matplotlib", "seaborn", "captum",
             "torchinfo", "papermill", "nbconvert")
ANSWERS_FILE = "answers.json"  # per page: title, computed answer, thumbnail (kept across partial rebuilds)
MODEL_FOLDER = "model"  # the run the pages were rendered from, shipped inside the report
# The pages' own style: navigation and provenance lines; the notebook content capped at 960 px (figures are drawn
# for plots.PAGE_WIDTH_PX, so no figure text falls under 9 px); formulas at body size (MathML's default math font
# runs small beside the sans-serif text); tables and images never wider than the page; no text under 11 px.
PAGE_STYLE = ("<style>.fer-nav{font:14px sans-serif;display:flex;gap:18px;padding:8px 16px;background:#f4f4f4;"
              "border-bottom:1px solid #ddd}.fer-prov{font:12px sans-serif;color:#555;padding:4px 16px}"
              "main,.jp-Notebook{max-width:960px;margin-left:auto;margin-right:auto}"
              ".jp-RenderedHTMLCommon{font-size:15px}.jp-RenderedHTMLCommon table{font-size:13px}"
              ".jp-OutputArea-output pre{font-size:13px}"
              "math{font-size:1.15em;font-family:'STIX Two Math','Latin Modern Math','Cambria Math',math,serif}"
              "math[display=block]{margin:0.6em 0;overflow-x:auto}"
              ".jp-RenderedHTML img,.jp-RenderedImage img{max-width:100%;height:auto}"
              ".jp-RenderedHTMLCommon{overflow-x:auto}"
              # the evidence under each answer, folded (plots.show.details), and figure captions
              "details.fer-evidence{border:1px solid #ddd;border-radius:4px;padding:4px 12px;margin:10px 0}"
              "details.fer-evidence>summary{cursor:pointer;font-weight:600;padding:4px 0}"
              ".fer-caption{color:#444;font-size:14px;margin:2px 0 16px}</style>")


def _selects(path: Path, name: str) -> bool:
    """Whether ``name`` (a number like "02", a stem, or a file name) picks the notebook at ``path``."""
    return path.stem.startswith(name) or path.name == name


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """The report's notebooks in order; ``only`` picks by number ("01") or name."""
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = [o for o in only if not any(_selects(p, o) for p in paths)]
        if unknown:
            raise ConfigError(f"no notebook matches {', '.join(unknown)}; the notebooks are "
                              + ", ".join(p.stem for p in paths))
        paths = [p for p in paths if any(_selects(p, o) for o in only)]
    return paths


def title_of(notebook: Path) -> str:
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return notebook.stem


# ---------------------------------------------------------------------------------------------
# what a page says about itself: its answer and key figure


def _tagged_outputs(nb, tag: str) -> list[dict]:
    return [out for cell in nb.cells if tag in cell.get("metadata", {}).get("tags", [])
            for out in cell.get("outputs", [])]


def page_answer(executed: Path) -> dict:
    """{"answer": Markdown text, "thumbnail": PNG data URI or ""} from an executed notebook's tagged cells."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    answer = " ".join(out["data"]["text/markdown"] for out in _tagged_outputs(nb, "answer")
                      if "text/markdown" in out.get("data", {}))
    figure = next((out for out in _tagged_outputs(nb, "key-figure") if "image/png" in out.get("data", {})), None)
    if figure is None:
        return {"answer": answer.strip(), "thumbnail": "", "thumbnail_alt": ""}
    # plots.show_figure puts the figure's alt text in the PNG's metadata (and as its plain-text form)
    alt = figure.get("metadata", {}).get("image/png", {}).get("alt") or ""
    png = figure["data"]["image/png"]
    return {"answer": answer.strip(), "thumbnail": "data:image/png;base64," + png, "thumbnail_alt": alt,
            "thumbnail_width": _css_width(png)}


def _css_width(png_base64: str) -> int:
    """The CSS width at which plots.show shows a PNG on its page (its dpi maps to 96 CSS px per inch)."""
    import base64

    from PIL import Image

    from fer_lib.plots.show import FIGURE_DPI

    return round(Image.open(io.BytesIO(base64.b64decode(png_base64))).size[0] * 96 / FIGURE_DPI)


# ---------------------------------------------------------------------------------------------
# HTML


def banner_html(ctx: Context) -> str:
    if not ctx.is_synthetic:
        return ""
    return ('<div style="position:sticky;top:0;z-index:10;background:#fff3cd;border-bottom:3px solid #d39e00;'
            f'padding:10px 16px;font:600 15px sans-serif">&#9888; {html.escape(SYNTHETIC_NOTICE)}</div>')


def provenance_line(metrics: dict) -> str:
    train_hash = next(iter(metrics["data_files"].values()), "")[:12]
    return (f"commit {metrics['git_commit'][:12]}"
            f"{' (uncommitted changes)' if 'uncommitted' in metrics['git_commit'] else ''}"
            f" · data sha256 {train_hash} · profile {metrics['profile']} · run {metrics['run_key']}"
            f" · built {metrics['built']}")


def render_html(executed: Path, out: Path) -> None:
    """Executed notebook -> self-contained HTML without code cells (images are embedded as data URIs)."""
    import nbformat
    from nbconvert import HTMLExporter

    from fer_lib.report.mathrender import offline_math

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    out.write_text(offline_math(body), encoding="utf-8")


def _decorate_page(page: Path, title: str, nav: str, banner: str, provenance: str) -> None:
    """Give a rendered page its <title>, navigation links, banner and provenance line (replacing old ones)."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"<!--fer-top-->.*?<!--/fer-top-->", "", text, flags=re.S)
    text = re.sub(r"<!--fer-bottom-->.*?<!--/fer-bottom-->", "", text, flags=re.S)
    text = re.sub(r"<title>.*?</title>", f"<title>{html.escape(title, quote=False)}</title>", text, count=1, flags=re.S)
    top = f"<!--fer-top-->{PAGE_STYLE}{banner}{nav}<div class='fer-prov'>{html.escape(provenance)}</div><!--/fer-top-->"
    i = text.index(">", text.index("<body")) + 1
    text = text[:i] + top + text[i:]
    j = text.rindex("</body>")
    text = text[:j] + f"<!--fer-bottom-->{nav}<!--/fer-bottom-->" + text[j:]
    page.write_text(text, encoding="utf-8")


def _nav(pages: list[tuple[str, str]], i: int) -> str:
    links = ['<a href="index.html">&#8962; index</a>']
    if i > 0:
        links.append(f'<a href="{pages[i - 1][0]}">&#8592; {html.escape(pages[i - 1][1])}</a>')
    if i + 1 < len(pages):
        links.append(f'<a href="{pages[i + 1][0]}">{html.escape(pages[i + 1][1])} &#8594;</a>')
    return f'<nav class="fer-nav">{"".join(links)}</nav>'


# the index's own words: what the test-time views are
VIEW_WORDS = {"flip": "flip views (each face averaged with its mirror image)",
              "flip+shift": "flip and shift views (each face averaged with its mirror image and shifted copies)"}
# the answer beside its key figure where the screen holds both at the figure's own size (figure text stays at its
# 10 px floor), the figure under the answer where it does not
INDEX_STYLE = """body{font:16px/1.5 sans-serif;max-width:1400px;margin:0 auto;padding:0 16px 40px}
code{background:#eee;padding:1px 4px}
.fer-item{display:flex;flex-wrap:wrap;gap:8px 24px;align-items:flex-start;margin:22px 0;
  border-top:1px solid #ddd;padding-top:10px}
.fer-item h2{flex:1 1 100%;margin:0;font-size:1.15em}
.fer-answer{flex:1 1 340px;max-width:440px;min-width:0}.fer-answer ul{margin:4px 0;padding-left:1.2em}
.fer-answer p{margin:4px 0}
.fer-thumb{flex:0 1 auto;max-width:100%}
.fer-thumb img{width:100%;height:auto;border:1px solid #ccc}"""


def headline_html(metrics: dict) -> str:
    """The index's opening lines: the model and its recipe, where its weights started, its validation accuracy."""
    from fer_lib.core.stats import wilson_interval
    from fer_lib.questions.q2_history import run_accuracy

    run, cfg = metrics.get("run", {}), metrics["config"]["config"]
    size = cfg["input_size"]
    faces = f"faces upsampled from 48x48 to {size}x{size}" if size != 48 else "faces at their own 48x48"
    start = ("ImageNet-pretrained weights, as the seed report's did" if run.get("weights_origin", "").startswith(
        "ImageNet") else "random initialisation (the seed report's started from ImageNet-pretrained weights)")
    text = (f"The seed report's ResNet18, its last layer replaced by Dropout(0.5) + Linear(512, 7), trained for "
            f"{cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''} on {faces}, from {start}.")
    acc = run_accuracy(run)
    if acc is not None and acc.faces:
        low, high = (float(v) for v in wilson_interval(round(acc.plain * acc.faces), acc.faces))
        held_out = (", and no copy of any of them (exact or near) is among the training faces"
                    if cfg.get("split") == "grouped" else "")
        text += (f"</p><p><b>Validation accuracy: {acc.plain:.1%}</b> (95% interval {low:.1%} to {high:.1%}) on "
                 f"{acc.faces:,} validation faces: faces of the training file held out from training{held_out}.")
        if acc.views != "none":
            text += (f" With {VIEW_WORDS.get(acc.views, acc.views)}, as the test predictions are made: "
                     f"{acc.with_views:.1%}; these views were the better of {len(acc.by_views) - 1} measured on the "
                     "same validation faces, so this figure is slightly optimistic.")
    copy = metrics.get("data_match", {})
    if "validation" in copy:  # a copy the shipped model serves: the same validation faces, perhaps re-encoded
        v = copy["validation"]
        text += (f"</p><p>This data is a copy of the shipped model's faces ({copy['exact']:,} exact, {copy['near']:,} "
                 f"re-encoded, {copy['new']:,} it never saw); on this copy's {v['faces']:,} validation faces: "
                 f"<b>{v['accuracy']:.1%}</b>, {v['accuracy_views']:.1%} with the same views.")
    test = metrics.get("test")
    if test:  # the test labels are known (Kaggle's file, class folders, the demo): scored beside validation
        usage = "; ".join(f"{name} {acc:.1%}" for name, acc in sorted(test.get("by_usage", {}).items(), reverse=True))
        unseen = test.get("without_training_copy")
        text += (f"</p><p><b>Test accuracy: {test['accuracy']:.1%}</b> on {test['faces']:,} labelled test faces"
                 + (f" ({usage})" if usage else "")
                 + (f"; {unseen:.1%} on the test faces without any copy in the training data" if unseen is not None
                    else "") + ".")
    return f"<p>{text}</p>"


def report_folder(out_root: Path, name: str, run_key: str) -> str:
    """report/<name>, unless that folder carries another run's model with its face keys (the shipped model of a
    committed report, or a trained run's): then report/<name>-<run key>, so that no build replaces a model."""
    existing = Path(out_root) / name / MODEL_FOLDER
    try:
        other = json.loads((existing / "config.json").read_text())["run_key"]
    except (OSError, ValueError, KeyError):
        return name
    if other == run_key or not (existing / KEYS_FILE).is_file():
        return name
    print(f"note: {existing} holds another model (run {other}); this report goes to {name}-{run_key}/",
          file=sys.stderr)
    return f"{name}-{run_key}"


def data_match(ctx: Context, run_dir: Path) -> dict:
    """How the data met its model, for metrics.json: a shipped model serving a copy (counts of exact, near and new
    faces), the shipped model trained on exactly these faces, or a run trained on them."""
    if ctx.served is not None:
        return {"how": "matched face by face", **ctx.served.summary()}
    if Path(run_dir).parent.parent == shipped_root():
        return {"how": "the shipped model's own faces, in its order", "model": model_name(run_dir),
                "exact": len(ctx.dataset.train), "near": 0, "new": 0}
    return {"how": "trained on these faces", "run": Path(run_dir).name}


def copy_accuracy(ctx: Context, run_dir: Path) -> dict:
    """Validation accuracy on a served copy's own validation faces, without and with the run's test-time views."""
    from fer_lib.model.inference import accuracy, predict_logits
    from fer_lib.training.runs import prediction_tta

    model = ctx.model()
    views = prediction_tta(run_dir)
    scores = {mode: accuracy(predict_logits(model, ctx.val.images, ctx.config.input_size, tta=mode,
                                            device=next(model.parameters()).device), ctx.val.labels)
              for mode in ("none", views)}
    return {"faces": len(ctx.val), "accuracy": scores["none"], "accuracy_views": scores[views], "views": views}


def write_index(folder: Path, ctx: Context, pages: list[tuple[str, str]], answers: dict, metrics: dict) -> None:
    """index.html: the headline, then each page's answer beside its key figure (side by side on a wide screen,
    one above the other on a narrow one), then the files that come with the report."""
    from fer_lib.plots.show import markdown_html
    from fer_lib.report.mathrender import offline_math

    run = metrics.get("run", {})
    items = []
    for href, title in pages:
        entry = answers.get(Path(href).stem, {})
        alt = entry.get("thumbnail_alt") or f"the key figure of {title}"
        width = entry.get("thumbnail_width") or 900  # the figure's own CSS width on its page
        thumb = (f'<a class="fer-thumb" href="{href}" style="width:{width}px"><img src="{entry["thumbnail"]}" '
                 f'alt="{html.escape(alt)}"></a>' if entry.get("thumbnail") else "")
        answer = markdown_html(entry["answer"]) if entry.get("answer") else ""
        items.append(f'<section class="fer-item"><h2><a href="{href}">{html.escape(title)}</a></h2>'
                     f'<div class="fer-answer">{answer}</div>'
                     f'{thumb}</section>')
    files = ""
    if metrics.get("predictions"):
        files += '<li><a href="predictions.csv">predictions.csv</a> (test set, id,label)</li>'
    copies = metrics.get("duplicates")
    if copies:
        files += (f'<li><a href="{copies["file"]}">{copies["file"]}</a>: the {copies["rows"]:,} of '
                  f'{copies["test_faces"]:,} test faces with a copy in the training file '
                  f'({copies["test_exact_copies"]:,} exact, {copies["test_near_copies"]:,} near; id and kind of copy, '
                  'no labels), to score the model on unseen faces</li>')
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>FER report: {html.escape(ctx.dataset.name)}</title><style>{INDEX_STYLE}</style></head><body>{banner_html(ctx)}
<h1>Facial expression recognition: {html.escape(ctx.dataset.name)}</h1>
{headline_html(metrics)}
{''.join(items)}
<ul><li><a href="metrics.json">metrics.json</a> (provenance: data hashes, config, versions, timings)</li>{files}
<li><a href="{MODEL_FOLDER}/">{MODEL_FOLDER}/</a>: the weights every page was computed from (float16 state dict,
sha256 {html.escape(str(run.get('weights_sha256', ''))[:16])}...), with the run's config, history and calibration</li>
</ul>
<p class="fer-prov" style="color:#555;font-size:12px">{html.escape(provenance_line(metrics))}</p>
</body></html>"""
    (folder / "index.html").write_text(offline_math(page), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# provenance


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        # report/ is this command's own output: a previous render there does not make the code uncommitted
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!report"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()
        return commit + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# ---------------------------------------------------------------------------------------------
# the build


def _previous_pages(final: Path, staging: Path, run_key: str) -> dict:
    """Copy the pages of ``final`` into ``staging`` when they come from the same run; returns their answers."""
    try:
        old = json.loads((final / "metrics.json").read_text())
        answers = json.loads((final / ANSWERS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if old.get("run_key") != run_key:
        print(f"note: the pages in {final} come from another run ({old.get('run_key')}); only the rebuilt "
              "pages are kept", file=sys.stderr)
        return {}
    for stem in answers:
        if (final / f"{stem}.html").exists():
            shutil.copy2(final / f"{stem}.html", staging / f"{stem}.html")
    return {stem: a for stem, a in answers.items() if (staging / f"{stem}.html").exists()}


def _keep_failed(executed: Path, out_root: Path, report_name: str) -> Path:
    failed_dir = out_root / ".failed" / report_name
    failed_dir.mkdir(parents=True, exist_ok=True)
    kept = failed_dir / executed.name
    shutil.copy2(executed, kept)
    return kept


def ipc_kernel_manager(socket_dir: Path):
    """A Jupyter kernel manager that talks to its kernel over Unix sockets in ``socket_dir`` instead of local TCP
    ports: nothing listens on the network, two builds never compete for ports, and the kernel has no reason to
    print its "running over TCP without encryption" warning once per notebook."""
    from jupyter_client.manager import KernelManager

    class IPCKernelManager(KernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(socket_dir / "kernel"))
            super().__init__(**kwargs)

    return IPCKernelManager


def report_lock(out_root: Path, report_name: str) -> Path:
    return Path(out_root) / f".{report_name}.lock"


def _recover(out_root: Path, report_name: str) -> None:
    """Undo what a killed build left behind: a report moved aside but not replaced is put back, and staging
    folders whose build process is gone are removed."""
    if recover_directory(out_root / report_name, out_root / f".{report_name}.previous"):
        print(f"note: restored {out_root / report_name} from a build that was interrupted", file=sys.stderr)
    prefix = f".{report_name}.staging-"
    for staging in out_root.glob(f"{prefix}*"):
        pid = staging.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_report(data: str | None = None, profile: str | None = None, out_root: Path = Path("report"),
                 runs_root: Path | str = "", device: str = "auto", notebooks: list[str] | None = None,
                 wait: bool = True, notebook_params: dict | None = None, retrain: bool = False) -> int:
    """Build report/<dataset>/; returns a process exit code (0 on success).

    ``notebook_params`` overrides notebooks' own parameters (such as 05's ``ascent_steps``), e.g. to make a
    test build cheaper; the dataset, profile, run cache and device are set by the other arguments.

    Two builds of the same report may run at once: the run they need is trained once (the second waits for
    the first), each stages its pages in its own folder, and each swaps its result in under the report's lock.
    ``wait=False`` refuses instead of waiting."""
    import papermill as pm

    from fer_lib.model.calibration import CALIBRATION_FILE
    from fer_lib.training.predict import (
        PREDICTIONS_FILE,
        TEST_DUPLICATES_FILE,
        TEST_OUTPUTS_FILE,
        ensure_run_outputs,
    )
    from fer_lib.training.runs import RUN_FILES

    started = time.perf_counter()
    timings: dict[str, float] = {}
    selected = notebook_paths(notebooks)  # an unknown name stops here, before any training
    clash = sorted(set(notebook_params or {}) & {"data", "profile", "runs", "device"})
    if clash:
        raise ConfigError(f"notebook_params cannot set {', '.join(clash)}: use the build's own arguments")
    t = time.perf_counter()
    ctx = load_context(data or "", profile or "", str(runs_root or ""), device, wait=wait, retrain=retrain)
    timings["load data"] = time.perf_counter() - t
    t = time.perf_counter()
    run_dir = ctx.ensure_run()  # train once here; the notebooks then find the run in the cache
    timings["train (or load cached run)"] = time.perf_counter() - t
    run_key = json.loads((run_dir / "config.json").read_text())["run_key"]
    t = time.perf_counter()
    # what the finished run knows about its data (written when it was trained; computed here once for older runs)
    outputs_dir = ctx.outputs_dir  # the run's folder, or the run cache's for a test set a shipped model never saw
    calibration, test_outputs = ensure_run_outputs(run_dir, ctx.dataset.train, ctx.val, ctx.dataset.test, device,
                                                   wait=wait, out_dir=outputs_dir)
    timings["read (or compute once) calibration and test predictions"] = time.perf_counter() - t

    out_root = Path(out_root).resolve()
    final = out_root / report_folder(out_root, ctx.report_name, run_key)
    with exclusive_lock(report_lock(out_root, final.name), f"updating {final}", wait=wait):
        _recover(out_root, final.name)
    # each build stages in a folder of its own, named after its process: two builds never share one
    out_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_root, prefix=f".{final.name}.staging-{os.getpid()}-"))
    (staging / "_build").mkdir()
    answers = _previous_pages(final, staging, run_key) if notebooks else {}
    params = {"data": str(ctx.data_path), "profile": ctx.profile, "runs": str(ctx.runs_root), "device": device}
    kernel_dir = tempfile.TemporaryDirectory(prefix="fer-kernel-")  # short paths: a socket path has 107 bytes
    try:
        for nb in selected:
            t = time.perf_counter()
            executed = staging / "_build" / nb.name
            print(f"executing {nb.name} ...", flush=True)
            try:
                own = set(pm.inspect_notebook(str(nb))) if notebook_params else set()
                overrides = {k: v for k, v in (notebook_params or {}).items() if k in own}  # quiet: only its own
                pm.execute_notebook(str(nb), str(executed), parameters={**params, **overrides}, cwd=str(NOTEBOOK_DIR),
                                    kernel_name="python3", progress_bar=False,
                                    kernel_manager_class=ipc_kernel_manager(Path(kernel_dir.name)))
            except Exception:
                if executed.exists():
                    print("the failed notebook, with its traceback: "
                          f"{_keep_failed(executed, out_root, final.name)}", file=sys.stderr)
                raise
            render_html(executed, staging / f"{nb.stem}.html")
            answers[nb.stem] = {"title": title_of(nb), **page_answer(executed)}
            timings[nb.stem] = time.perf_counter() - t
        # the model the pages were computed from travels with them, and so do its test predictions
        (staging / MODEL_FOLDER).mkdir()
        for name in (*RUN_FILES, CALIBRATION_FILE, *([KEYS_FILE] if (run_dir / KEYS_FILE).exists() else [])):
            shutil.copy2(run_dir / name, staging / MODEL_FOLDER / name)
        for name in (PREDICTIONS_FILE, TEST_DUPLICATES_FILE, TEST_OUTPUTS_FILE) if test_outputs else ():
            shutil.copy2(outputs_dir / name, staging / MODEL_FOLDER / name)
        metrics = {"dataset": ctx.dataset.name, "layout": ctx.dataset.layout, "profile": ctx.profile,
                   "synthetic": ctx.is_synthetic, "git_commit": git_commit(), "run_key": run_key,
                   "built": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                   "data_files": {str(p.name): file_sha256(p) for p in ctx.dataset.files},
                   "config": json.loads((run_dir / "config.json").read_text()),
                   "run": json.loads((run_dir / "run.json").read_text()),
                   "libraries": library_versions(), "platform": platform.platform(), "calibration": calibration}
        metrics["data_match"] = data_match(ctx, run_dir)
        if ctx.served is not None:  # the record is the model's own faces; a copy's faces may be re-encoded
            metrics["data_match"]["validation"] = copy_accuracy(ctx, run_dir)
        if test_outputs:
            for name in (PREDICTIONS_FILE, TEST_DUPLICATES_FILE):
                shutil.copy2(outputs_dir / name, staging / name)
            metrics["duplicates"] = test_outputs["duplicates"]
            metrics["predictions"] = test_outputs["predictions"]
            if "test" in test_outputs:  # labelled test faces: scored (never the case for hidden labels)
                scored = test_outputs["test"]
                metrics["test"] = {k: scored[k] for k in ("faces", "accuracy", "by_usage", "without_training_copy")
                                   if k in scored}
        timings["total"] = time.perf_counter() - started
        metrics["wall_seconds"] = {k: round(v, 2) for k, v in timings.items()}
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        order = [p.stem for p in notebook_paths()]
        pages = [(f"{stem}.html", answers[stem]["title"]) for stem in order if stem in answers]
        for i, (href, title) in enumerate(pages):
            # the synthetic-data notice is the notebook's own (ctx.banner(), seen in JupyterLab too): not repeated here
            _decorate_page(staging / href, f"{title} | FER report: {ctx.dataset.name}", _nav(pages, i), "",
                           provenance_line(metrics))
        (staging / ANSWERS_FILE).write_text(json.dumps(answers, indent=1))
        write_index(staging, ctx, pages, answers, metrics)
    except Exception as err:  # noqa: BLE001 - any failure must leave the old report in place
        print(f"error: report not updated ({err.__class__.__name__}: {str(err)[:2000]}); previous {final} "
              "left as it was", file=sys.stderr)
        shutil.rmtree(staging, ignore_errors=True)
        return 1
    finally:
        kernel_dir.cleanup()
    shutil.rmtree(staging / "_build")
    # swap in under the report's lock, in one atomic exchange: report/<name> exists at every moment
    with exclusive_lock(report_lock(out_root, final.name), f"updating {final}", wait=wait):
        replace_directory(staging, final, out_root / f".{final.name}.previous")
    print(f"report: {final / 'index.html'} ({timings['total']:.0f} s)")
    return 0
