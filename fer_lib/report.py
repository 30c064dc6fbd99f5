"""`make report`: train once, execute the notebooks with papermill, render HTML, write index and provenance.

Everything is built in a staging folder next to ``report/<dataset>/`` and swapped in only when every
notebook succeeded, so a failure leaves the previous report untouched.
"""
from __future__ import annotations

import html
import json
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .context import PROJECT_ROOT, SYNTHETIC_NOTICE, Context, load_context

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
LIBRARIES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "matplotlib", "seaborn", "captum",
             "torchinfo", "papermill", "nbconvert")


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """The report's notebooks in order; ``only`` picks by number ("01") or name."""
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.stem == o or p.stem.startswith(o) or p.name == o for o in only)]
        if not paths:
            raise ValueError(f"no notebook matches {only}")
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


def render_html(executed: Path, out: Path, banner: str | None) -> None:
    """Executed notebook -> self-contained HTML without code cells (images are embedded as data URIs)."""
    import nbformat
    from nbconvert import HTMLExporter

    from .mathrender import offline_math

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    nb = nbformat.read(executed, as_version=4)
    body, _ = exporter.from_notebook_node(nb)
    body = offline_math(body)
    if banner:  # right after the opening <body ...> tag, so it is the first thing on the page
        i = body.index(">", body.index("<body")) + 1
        body = body[:i] + banner + body[i:]
    out.write_text(body, encoding="utf-8")


def banner_html(ctx: Context) -> str | None:
    if not ctx.is_synthetic:
        return None
    return ('<div style="position:sticky;top:0;z-index:10;background:#fff3cd;border-bottom:3px solid #d39e00;'
            f'padding:10px 16px;font:600 15px sans-serif">&#9888; {html.escape(SYNTHETIC_NOTICE)}</div>')


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True).stdout.strip()
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


def write_index(folder: Path, ctx: Context, pages: list[tuple[str, str]], metrics: dict) -> None:
    banner = banner_html(ctx) or ""
    rows = "\n".join(f'<li><a href="{html.escape(href)}">{html.escape(title)}</a></li>' for href, title in pages)
    best = metrics.get("run", {}).get("best_val_acc")
    summary = f"best validation accuracy {best:.1%}" if isinstance(best, float) else ""
    extra = '<li><a href="predictions.csv">predictions.csv</a> (test set, id,label)</li>' if metrics.get("predictions") else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>FER report: {html.escape(ctx.dataset.name)}</title>
<style>body{{font:16px/1.5 sans-serif;max-width:760px;margin:0 auto;padding:0 16px 40px}} code{{background:#eee;padding:1px 4px}}</style>
</head><body>{banner}<h1>Facial expression recognition: {html.escape(ctx.dataset.name)}</h1>
<p>ResNet18 (the seed report's model) trained with profile <code>{html.escape(ctx.profile)}</code>; {summary}.
Commit <code>{html.escape(metrics['git_commit'])}</code>, built {html.escape(metrics['built'])}.</p>
<ol>{rows}</ol><ul><li><a href="metrics.json">metrics.json</a> (provenance: data hashes, config, versions, timings)</li>{extra}</ul>
</body></html>"""
    (folder / "index.html").write_text(page, encoding="utf-8")


def build_report(data: str | None = None, profile: str | None = None, out_root: Path = Path("report"),
                 runs_root: Path = Path("runs"), device: str = "auto", notebooks: list[str] | None = None) -> int:
    """Build report/<dataset>/; returns a process exit code (0 on success)."""
    import papermill as pm

    from .data import file_sha256
    from .predict import write_predictions

    started = time.perf_counter()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    ctx = load_context(data or "", profile or "", str(runs_root), device)
    timings["load data"] = time.perf_counter() - t
    t = time.perf_counter()
    run_dir = ctx.run_dir  # train once here; the notebooks then find the run in the cache
    timings["train (or load cached run)"] = time.perf_counter() - t

    out_root = Path(out_root) if Path(out_root).is_absolute() else PROJECT_ROOT / out_root
    final = out_root / ctx.report_name
    staging = out_root / f".{ctx.report_name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "_build").mkdir(parents=True)
    params = {"data": str(ctx.data_path), "profile": ctx.profile, "runs": str(ctx.runs_root), "device": device}
    pages = []
    try:
        for nb in notebook_paths(notebooks):
            t = time.perf_counter()
            executed = staging / "_build" / nb.name
            print(f"executing {nb.name} ...", flush=True)
            pm.execute_notebook(str(nb), str(executed), parameters=params, cwd=str(NOTEBOOK_DIR),
                                kernel_name="python3", progress_bar=False)
            render_html(executed, staging / f"{nb.stem}.html", banner_html(ctx))
            pages.append((f"{nb.stem}.html", title_of(nb)))
            timings[nb.stem] = time.perf_counter() - t
        metrics = {"dataset": ctx.dataset.name, "layout": ctx.dataset.layout, "profile": ctx.profile,
                   "synthetic": ctx.is_synthetic, "git_commit": git_commit(),
                   "built": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                   "data_files": {str(p.name): file_sha256(p) for p in ctx.dataset.files},
                   "config": json.loads((run_dir / "config.json").read_text()),
                   "run": json.loads((run_dir / "run.json").read_text()),
                   "libraries": library_versions(), "platform": platform.platform()}
        if ctx.dataset.test is not None:
            t = time.perf_counter()
            counts = write_predictions(run_dir, ctx.dataset.test, staging / "predictions.csv", tta=True, device=device)
            metrics["predictions"] = {"file": "predictions.csv", "rows": len(ctx.dataset.test), "tta": "horizontal flip",
                                      "predicted_class_counts": counts}
            timings["predict test set"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        metrics["wall_seconds"] = {k: round(v, 2) for k, v in timings.items()}
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_index(staging, ctx, pages, metrics)
    except Exception as err:  # noqa: BLE001 - any failure must leave the old report in place
        print(f"error: report not updated ({err.__class__.__name__}: {err}); previous {final} left as it was",
              file=sys.stderr)
        shutil.rmtree(staging, ignore_errors=True)
        return 1
    # swap in: old -> backup, staging -> final, drop backup
    backup = out_root / f".{ctx.report_name}.previous"
    shutil.rmtree(backup, ignore_errors=True)
    if final.exists():
        final.rename(backup)
    staging.rename(final)
    shutil.rmtree(backup, ignore_errors=True)
    print(f"report: {final / 'index.html'} ({timings['total']:.0f} s)")
    return 0
