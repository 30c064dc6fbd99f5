"""The report builder: executes the notebooks (papermill), renders the pages (nbconvert template templates/fer) and
the index (a Jinja template fed by each page's answer and metrics.json); it runs no model and writes no sentence (the
caller runs ``ctx.prepare()`` first). The new report is assembled beside the old one under the report's lock: a failed
notebook leaves the old report whole (and is kept in report/.failed/); a partial rebuild keeps the run's other pages."""
from __future__ import annotations

import base64
import functools
import io
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import nbformat
from PIL import Image

from fer_lib import ConfigError
from fer_lib.core.io import exclusive_lock, file_sha256, replace_directory, restore_directory
from fer_lib.data.face_keys import KEYS_FILE
from fer_lib.model.calibration import CALIBRATION_FILE
from fer_lib.report.context import PROJECT_ROOT, SYNTHETIC_NOTICE, Context, shipped_root
from fer_lib.report.mathrender import offline_math
from fer_lib.training.finish import PREDICTIONS_FILE, TEST_DUPLICATES_FILE, TEST_OUTPUTS_FILE
from fer_lib.training.runs import RUN_FILES

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
TEMPLATES = Path(__file__).parent / "templates"
LIBRARIES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "matplotlib", "seaborn", "captum",
             "torchinfo", "papermill", "nbconvert")
ANSWERS_FILE = "answers.json"  # per page: title, answer, key figure (kept across partial rebuilds)
MODEL_FOLDER = "model"  # the run the pages were rendered from, shipped inside the report


class NotebookFailed(RuntimeError):
    """A notebook raised: the report was not updated (the message names the notebook kept with its traceback)."""


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """The report's notebooks in order; ``only`` picks by number ("01"), stem or file name."""
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    unknown = [name for name in only or () if not any(p.name.startswith(name) for p in paths)]
    if unknown:
        raise ConfigError(f"no notebook matches {', '.join(unknown)}; the notebooks are "
                          + ", ".join(p.stem for p in paths))
    return [p for p in paths if not only or any(p.name.startswith(name) for name in only)]


def title_of(notebook: Path) -> str:
    """The notebook's first "# " heading."""
    text = "\n".join(c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "markdown")
    found = re.search(r"^# (.+)$", text, re.M)
    return found.group(1).strip() if found else notebook.stem


def page_answer(nb) -> dict:
    """What the index shows of an executed notebook: its ``answer`` cells' Markdown and the first PNG of its
    ``key-figure`` cell (as a data URI, with its alt text and the CSS width it has on its page)."""
    def outputs(tag: str, kind: str) -> list[dict]:
        return [out for cell in nb.cells if tag in cell.metadata.get("tags", []) for out in cell.get("outputs", [])
                if kind in out.get("data", {})]

    entry = {"answer": " ".join(out["data"]["text/markdown"] for out in outputs("answer", "text/markdown")).strip()}
    if figure := next(iter(outputs("key-figure", "image/png")), None):
        from fer_lib.plots.show import FIGURE_DPI

        png = figure["data"]["image/png"]
        pixels = Image.open(io.BytesIO(base64.b64decode(png))).size[0]
        # plots.show_figure puts the figure's alt text in the PNG's metadata and shows it at 96 CSS px per inch
        entry.update(thumbnail="data:image/png;base64," + png, thumbnail_width=round(pixels * 96 / FIGURE_DPI),
                     thumbnail_alt=figure.get("metadata", {}).get("image/png", {}).get("alt") or "")
    return entry


@functools.cache
def page_exporter():
    """One exporter for every page: building one compiles the template anew (about a second a page)."""
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="fer", extra_template_basedirs=[str(TEMPLATES)], exclude_input=True,
                        exclude_input_prompt=True, exclude_output_prompt=True)


def render_page(nb, pages: list[dict], i: int, metrics: dict) -> str:
    """An executed notebook as a self-contained page (images as data URIs, formulas as MathML), no code cells."""
    nb.metadata["title"] = f"{pages[i]['title']} | FER report: {metrics['dataset']}"  # the lab template's <title>
    for cell in (c for c in nb.cells if c.cell_type == "code"):  # an empty Markdown output (ctx.banner() where no
        # shipped model serves a copy) or a cell without output would leave a blank gap under the question
        cell.outputs = [o for o in cell.outputs if o.get("data", {}).get("text/markdown") != ""]
    nb.cells = [c for c in nb.cells if c.cell_type != "code" or c.outputs]
    body, _ = page_exporter().from_notebook_node(nb, resources={
        "fer": {"pages": pages, "i": i, "metrics": metrics, "notice": SYNTHETIC_NOTICE}})
    return offline_math(body)


def render_index(pages: list[dict], metrics: dict) -> str:
    import jinja2
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    from fer_lib.core.stats import wilson_interval

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES / "fer"), autoescape=True)
    env.filters.update(markdown2html=markdown2html_mistune, pct="{:.1%}".format, count="{:,}".format)
    env.globals["interval"] = lambda p, n: tuple(float(v) for v in wilson_interval(round(p * n), n))
    page = env.get_template("report_index.html.j2").render(pages=pages, metrics=metrics, notice=SYNTHETIC_NOTICE)
    return offline_math(page)


def provenance(ctx: Context, run_dir: Path) -> dict:
    """metrics.json: the data, code, run, calibration, test outputs and how the data met its model."""
    config = json.loads((run_dir / "config.json").read_text())
    installed = {dist.metadata["Name"].lower(): dist.version for dist in metadata.distributions()}
    try:  # report/ is this command's own output: a previous render there does not make the code uncommitted
        git = functools.partial(subprocess.run, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
        dirty = git(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!report"]).stdout.strip()
        commit = git(["git", "rev-parse", "HEAD"]).stdout.strip() + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    libraries = {"python": platform.python_version(), **{k: installed.get(k, "not installed") for k in LIBRARIES}}
    if ctx.served is not None:  # a copy the shipped model serves, matched face by face
        match = {"how": "matched face by face", **ctx.served.summary()}
    elif run_dir.parent.parent == shipped_root():
        match = {"how": "the shipped model's own faces, in its order", "model": run_dir.parent.name,
                 "exact": len(ctx.dataset.train), "near": 0, "new": 0}
    else:
        match = {"how": "trained on these faces", "run": run_dir.name}
    metrics = {"dataset": ctx.dataset.name, "layout": ctx.dataset.layout, "profile": ctx.profile,
               "synthetic": ctx.is_synthetic, "git_commit": commit, "run_key": config["run_key"],
               "built": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "config": config, "libraries": libraries,
               "data_files": {p.name: file_sha256(p) for p in ctx.dataset.files}, "platform": platform.platform(),
               "run": json.loads((run_dir / "run.json").read_text()), "data_match": match,
               "calibration": json.loads((run_dir / CALIBRATION_FILE).read_text())}
    outputs = ctx.test_outputs()  # written by ctx.prepare()
    if outputs:  # "test" only where the test faces carry labels (never the homework's hidden ones)
        metrics.update({k: outputs[k] for k in ("duplicates", "predictions", "test") if k in outputs})
    return metrics


def recover(final: Path) -> None:
    """Undo what a killed build of ``final`` left (called under the report's lock): remove its staging folder and
    put back the old report it had moved aside (core.io.restore_directory)."""
    shutil.rmtree(final.with_name(f".{final.name}.staging"), ignore_errors=True)
    restore_directory(final)


@contextmanager
def shared_kernel(folder: Path):
    """One kernel for a build's notebooks, started in notebooks/: imports are paid once a build, not once a page;
    ``reset()`` empties its namespace and numbers cells from 1 between notebooks, so each runs as it does alone."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    class Kernel(AsyncKernelManager):
        def client(self, **kwargs):  # nbclient opens one per notebook and leaves it open on a kernel it does not own
            self.clients = [*getattr(self, "clients", []), super().client(**kwargs)]
            return self.clients[-1]

        def reset(self, empty: bool = True) -> None:
            for client in getattr(self, "clients", []):
                if empty:
                    run_sync(client.execute_interactive)("get_ipython().reset(new_session=True)", silent=True,
                                                         store_history=False, timeout=60)
                client.stop_channels()
            self.clients = []

    # the kernel talks over Unix sockets there: no network port, and no warning that TCP is unencrypted
    kernel = Kernel(kernel_name="python3", transport="ipc", ip=str(Path(folder) / "kernel"))
    run_sync(kernel.start_kernel)(cwd=str(NOTEBOOK_DIR))
    try:
        yield kernel
    finally:
        kernel.reset(empty=False)
        run_sync(kernel.shutdown_kernel)(now=True)


def build_report(ctx: Context, out_root: Path = Path("report"), only: list[str] | None = None,
                 params: dict | None = None) -> Path:
    """Render report/<dataset>/ from the prepared context and return its index.html; ``only`` rebuilds some pages
    (numbers or names), ``params`` sets notebooks' own parameters (those a notebook lacks are left out for it)."""
    import papermill as pm

    started = time.perf_counter()
    selected = notebook_paths(only)
    shared = {"data": str(ctx.data_path), "profile": ctx.profile, "runs": str(ctx.runs_root), "device": ctx.device}
    clash = sorted(set(params or {}) & set(shared))
    if clash:
        raise ConfigError(f"params cannot set {', '.join(clash)}: they come from the context")
    run_dir = ctx.run_dir
    run_key = json.loads((run_dir / "config.json").read_text())["run_key"]
    out_root = Path(out_root).resolve()
    final, model = out_root / ctx.report_name, out_root / ctx.report_name / MODEL_FOLDER
    # a report shipping another run's model with its face keys (a shipped model, which `make report RETRAIN=1` must
    # not replace) keeps its folder: this one goes beside it
    if (model / KEYS_FILE).is_file() and json.loads((model / "config.json").read_text())["run_key"] != run_key:
        print(f"note: {final} ships another model; this report goes to {final.name}-{run_key}/", file=sys.stderr)
        final = final.with_name(f"{final.name}-{run_key}")
    staging = final.with_name(f".{final.name}.staging")
    titles = {p.stem: title_of(p) for p in notebook_paths()}
    with exclusive_lock(out_root / f".{final.name}.lock", f"building {final}", wait=ctx.wait):
        recover(final)
        answers = {}
        if only and final.is_dir() and json.loads((final / "metrics.json").read_text())["run_key"] == run_key:
            shutil.copytree(final, staging)  # the other pages of the same run are kept
            answers = json.loads((staging / ANSWERS_FILE).read_text())
        else:
            staging.mkdir(parents=True)
        try:
            with tempfile.TemporaryDirectory(prefix="fer-executed-") as executed_dir, \
                    shared_kernel(Path(executed_dir)) as kernel:
                executed, timings = {}, {}
                for nb in selected:
                    t = time.perf_counter()
                    print(f"executing {nb.name} ...", flush=True)
                    own = {k: v for k, v in (params or {}).items() if k in pm.inspect_notebook(str(nb))}
                    path = Path(executed_dir) / nb.name
                    try:
                        pm.execute_notebook(str(nb), str(path), parameters={**shared, **own}, kernel_name="python3",
                                            progress_bar=False, km=kernel)
                    except Exception as err:
                        kept = out_root / ".failed" / final.name / nb.name
                        kept.parent.mkdir(parents=True, exist_ok=True)
                        if path.exists():  # papermill saves it with the error in the failing cell
                            shutil.copy2(path, kept)
                        raise NotebookFailed(f"{nb.name} failed ({err.__class__.__name__}): {final} was not updated; "
                                             f"the failed notebook, with its traceback: {kept}") from err
                    if nb != selected[-1]:  # (the last one's kernel is shut down instead)
                        kernel.reset()
                    executed[nb.stem] = nbformat.read(path, as_version=4)
                    answers[nb.stem] = {"title": titles[nb.stem], **page_answer(executed[nb.stem])}
                    timings[nb.stem] = round(time.perf_counter() - t, 2)
            # the model the pages were computed from travels with them, and so do its test predictions
            shutil.rmtree(staging / MODEL_FOLDER, ignore_errors=True)
            (staging / MODEL_FOLDER).mkdir()
            for source in [run_dir / name for name in (*RUN_FILES, CALIBRATION_FILE, KEYS_FILE)] + [
                    ctx.outputs_dir / name for name in (PREDICTIONS_FILE, TEST_DUPLICATES_FILE, TEST_OUTPUTS_FILE)]:
                if source.is_file():
                    shutil.copy2(source, staging / MODEL_FOLDER)
                    if source.name in (PREDICTIONS_FILE, TEST_DUPLICATES_FILE):
                        shutil.copy2(source, staging)
            metrics = provenance(ctx, run_dir)
            metrics["wall_seconds"] = {**timings, "total": round(time.perf_counter() - started, 2)}
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
            (staging / ANSWERS_FILE).write_text(json.dumps(answers, indent=1))
            # every page links to its neighbours in the notebooks' order; a kept page keeps its own provenance line
            nav = [{"href": f"{stem}.html", "title": title} for stem, title in titles.items()]
            for i, stem in enumerate(titles):
                if stem in executed:
                    (staging / f"{stem}.html").write_text(render_page(executed[stem], nav, i, metrics), "utf-8")
            pages = [{**page, **answers[stem]} for stem, page in zip(titles, nav) if stem in answers]
            (staging / "index.html").write_text(render_index(pages, metrics), "utf-8")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        replace_directory(staging, final)
    print(f"report: {final / 'index.html'} ({time.perf_counter() - started:.0f} s)")
    return final / "index.html"
