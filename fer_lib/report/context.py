"""What every notebook and the report need, resolved one way: dataset, profile, run, model, split.

A notebook opened alone in JupyterLab and the same notebook executed by ``make report`` call
:func:`load_context` with the same parameters and so get the same (cached) run. Relative paths are
taken from the current directory, as in every command-line tool; the defaults (``./data``, the demo
dataset, the run cache ``runs/``) are the project's own folders wherever the caller stands.
"""
from __future__ import annotations

import html
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from fer_lib.data.layouts import Dataset, FaceSet, detect_layout, load_dataset
from fer_lib.training.runs import TrainConfig, config_for, load_trained, resolve_device, split_for
from fer_lib.training.train import ensure_run

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUNS = PROJECT_ROOT / "runs"
SYNTHETIC_FOLDER = PROJECT_ROOT / "data" / "synthetic"  # ignored by git, drawn on first use
SYNTHETIC_SIZES = {"n_train": 3500, "n_test": 700, "seed": 0}
SYNTHETIC_NOTICE = ("SYNTHETIC DEMO DATA: these pages were computed on procedurally drawn faces, not on FER2013. "
                    "Point the report at the real data with `make report DATA=path/to/fer2013` "
                    "(a folder holding train.csv[.gz] and test.csv[.gz]).")


def default_data_path() -> Path | None:
    """./data when it holds a dataset, or its one dataset subfolder (the synthetic demo folder excluded)."""
    root = PROJECT_ROOT / "data"
    if not root.is_dir():
        return None
    if detect_layout(root):
        return root
    found = [p for p in sorted(root.iterdir()) if p.is_dir() and p != SYNTHETIC_FOLDER and detect_layout(p)]
    return found[0] if found else None


def default_profile(dataset: Dataset) -> str:
    return "synthetic" if dataset.synthetic else "full"


@dataclass
class Context:
    dataset: Dataset
    config: TrainConfig
    profile: str
    runs_root: Path
    device: str
    data_path: Path
    wait: bool = True  # wait for another process training the same run (False: refuse)

    @property
    def is_synthetic(self) -> bool:
        return self.dataset.synthetic

    @property
    def report_name(self) -> str:
        """report/<name>/: the dataset's name, suffixed with the profile unless it is the default one, so a
        quick run never replaces the full report of the same data."""
        name = self.dataset.name
        return name if self.profile == default_profile(self.dataset) else f"{name}-{self.profile}"

    @property
    def shipped_model_dir(self) -> Path:
        """report/<name>/model/: the model a committed report was rendered from, reused when its run key matches."""
        return PROJECT_ROOT / "report" / self.report_name / "model"

    @cached_property
    def run_dir(self) -> Path:
        return ensure_run(self.dataset, self.config, self.runs_root, device=self.device, shipped=self.shipped_model_dir,
                          wait=self.wait)

    @cached_property
    def split(self) -> tuple[FaceSet, FaceSet]:
        return split_for(self.dataset, self.config)

    @property
    def val(self) -> FaceSet:
        return self.split[1]

    @property
    def device_obj(self):
        return resolve_device(self.device)

    def model(self):
        """The run's shipped (best-validation) model, in eval mode on the context's device (a fresh copy per call)."""
        return load_trained(self.run_dir, device=resolve_device(self.device))[0]

    @cached_property
    def val_logits(self):
        """Logits (N, 7) of the run's model on the validation faces (computed once per notebook)."""
        from fer_lib.model.inference import predict_logits

        model = self.model()
        return predict_logits(model, self.val.images, self.config.input_size,
                              device=next(model.parameters()).device)

    def banner(self):
        """The data notice at the top of a page (a loud warning on the synthetic demo)."""
        from IPython.display import HTML

        return HTML(data_notice_html(self))


def load_context(data: str = "", profile: str = "", runs: str = "", device: str = "auto", wait: bool = True,
                 **overrides) -> Context:
    """Resolve the dataset (given, ./data, or the synthetic demo), the profile's TrainConfig and the run cache.

    ``data`` and ``runs`` are paths relative to the current directory; empty means the project's defaults.
    """
    from fer_lib.data.synthetic import ensure_synthetic_dataset

    data_path = Path(data).resolve() if data else default_data_path()
    if data_path is None:
        print(f"WARNING: {SYNTHETIC_NOTICE}", file=sys.stderr)
        data_path = ensure_synthetic_dataset(SYNTHETIC_FOLDER, **SYNTHETIC_SIZES)
    dataset = load_dataset(data_path)
    profile = profile or default_profile(dataset)
    config = config_for(profile, **overrides)
    runs_root = Path(runs).resolve() if runs else DEFAULT_RUNS
    return Context(dataset, config, profile, runs_root, device, data_path, wait)


def ablation_table():
    """docs/ablation.csv (the measurements behind the `full` recipe) as a DataFrame, or None."""
    import pandas as pd

    path = PROJECT_ROOT / "docs" / "ablation.csv"
    return pd.read_csv(path) if path.exists() else None


# the data notice names a dataset's layout (data.detect_layout) in words
LAYOUT_WORDS = {"homework-csv": "the homework's CSV files", "fer2013.csv": "the original Kaggle CSV file",
                "image-ids": "image files listed by id", "class-folders": "one image folder per class"}


def data_notice_html(ctx: "Context") -> str:
    """The line under each page's title saying what data it was computed on (a loud box for the demo)."""
    if not ctx.is_synthetic:
        files = LAYOUT_WORDS.get(ctx.dataset.layout, ctx.dataset.layout)
        return (f"<p><b>Data:</b> {html.escape(ctx.dataset.name)} ({html.escape(files)}), "
                f"{len(ctx.dataset.train):,} training faces; training recipe: {html.escape(ctx.profile)} "
                "(see the appendix).</p>")
    return ('<div style="background:#fff3cd;border:2px solid #d39e00;padding:10px 14px;'
            f'font-size:1.05em;margin:8px 0"><b>&#9888; {html.escape(SYNTHETIC_NOTICE)}</b></div>')
