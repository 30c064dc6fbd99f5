"""What every notebook and the report need, resolved one way: dataset, profile, run, model, split.

A notebook opened alone in JupyterLab and the same notebook executed by ``make report`` call
:func:`load_context` with the same parameters and so get the same (cached) run.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .data import Dataset, FaceSet, load_dataset
from .train import TrainConfig, config_for, ensure_run, load_trained, resolve_device, split_for

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC_NAME = "synthetic"
SYNTHETIC_SIZES = {"n_train": 3500, "n_test": 700, "seed": 0}
SYNTHETIC_NOTICE = ("SYNTHETIC DEMO DATA: these pages were computed on procedurally drawn faces, not on FER2013. "
                    "Point the report at the real data with `make report DATA=path/to/fer2013` "
                    "(a folder holding train.csv[.gz] and test.csv[.gz]).")


def _project_path(path: str | Path) -> Path:
    """Relative paths are taken from the project root, so notebooks (cwd notebooks/) and make agree."""
    path = Path(path)
    return path if path.is_absolute() else PROJECT_ROOT / path


def _looks_like_dataset(folder: Path) -> bool:
    names = ("train.csv", "train.csv.gz", "fer2013.csv", "fer2013.csv.gz")
    return any((folder / n).is_file() for n in names) or (folder / "train_img").is_dir() or (folder / "train").is_dir()


def default_data_path() -> Path | None:
    """./data when it holds a dataset, or its one dataset subfolder (the synthetic cache excluded)."""
    root = PROJECT_ROOT / "data"
    if not root.is_dir():
        return None
    if _looks_like_dataset(root):
        return root
    found = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name != SYNTHETIC_NAME and _looks_like_dataset(p)]
    return found[0] if found else None


def synthetic_data_path() -> Path:
    """The embedded dataset, drawn once into data/synthetic/ (ignored by git) and reused."""
    from .synthetic import write_synthetic_dataset

    folder = PROJECT_ROOT / "data" / SYNTHETIC_NAME
    if not (folder / "train.csv").exists() or not (folder / "test.csv").exists():
        write_synthetic_dataset(folder, **SYNTHETIC_SIZES)
    return folder


def default_profile(dataset_name: str) -> str:
    return "synthetic" if dataset_name == SYNTHETIC_NAME else "full"


@dataclass
class Context:
    dataset: Dataset
    config: TrainConfig
    profile: str
    runs_root: Path
    device: str
    data_path: Path

    @property
    def is_synthetic(self) -> bool:
        return self.dataset.name == SYNTHETIC_NAME

    @property
    def report_name(self) -> str:
        """report/<name>/: the dataset's name, suffixed with the profile unless it is the default one, so a
        quick run never replaces the full report of the same data."""
        return self.dataset.name if self.profile == default_profile(self.dataset.name) else f"{self.dataset.name}-{self.profile}"

    @cached_property
    def run_dir(self) -> Path:
        return ensure_run(self.dataset, self.config, self.runs_root, device=self.device)

    @cached_property
    def split(self) -> tuple[FaceSet, FaceSet]:
        return split_for(self.dataset, self.config)

    @property
    def val(self) -> FaceSet:
        return self.split[1]

    def model(self):
        """The best-validation model of the run, in eval mode (a fresh copy on every call)."""
        return load_trained(self.run_dir, device=resolve_device(self.device))[0]

    @cached_property
    def val_logits(self):
        """Logits (N, 7) of the run's best model on the validation faces (computed once per notebook)."""
        from .evaluate import predict_logits

        dev = resolve_device(self.device)
        return predict_logits(self.model(), self.val.images, self.config.input_size, device=dev)

    def banner(self):
        """An HTML notice for the top of every page of a synthetic report (nothing for real data)."""
        from IPython.display import HTML

        if not self.is_synthetic:
            return HTML(f"<p><b>Data:</b> {self.dataset.name} ({self.dataset.layout}), {len(self.dataset.train)} "
                        f"training faces; profile <code>{self.profile}</code>.</p>")
        return HTML('<div style="background:#fff3cd;border:2px solid #d39e00;padding:10px 14px;'
                    f'font-size:1.05em;margin:8px 0"><b>&#9888; {SYNTHETIC_NOTICE}</b></div>')


def load_context(data: str = "", profile: str = "", runs: str = "runs", device: str = "auto",
                 **overrides) -> Context:
    """Resolve the dataset (given, ./data, or synthetic), the profile's TrainConfig and the run cache."""
    if data:
        data_path = _project_path(data)
        dataset = load_dataset(data_path)
    else:
        data_path = default_data_path()
        if data_path is not None:
            dataset = load_dataset(data_path)
        else:
            print(f"WARNING: {SYNTHETIC_NOTICE}", file=sys.stderr)
            data_path = synthetic_data_path()
            dataset = load_dataset(data_path, name=SYNTHETIC_NAME)
    profile = profile or default_profile(dataset.name)
    config = config_for(profile, **overrides)
    return Context(dataset, config, profile, _project_path(runs), device, data_path)


def ablation_table():
    """docs/ablation.csv (the measurements behind the `full` recipe) as a DataFrame, or None."""
    import pandas as pd

    path = PROJECT_ROOT / "docs" / "ablation.csv"
    return pd.read_csv(path) if path.exists() else None
