"""What every notebook and the report need, resolved one way: dataset, profile, run, model, split, and what the
finished run computed for this data; a notebook opened alone in JupyterLab and the build read the same run."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from fer_lib import ConfigError
from fer_lib.core.io import cpu_has_fast_bf16, cpu_model, default_cache_dir
from fer_lib.data.layouts import Dataset, FaceSet, detect_layout, load_dataset
from fer_lib.training import runs
from fer_lib.training.finish import ensure_outputs, read_test_outputs, read_val_logits
from fer_lib.training.runs import TrainConfig, config_for
from fer_lib.training.shipped import SERVE_MIN_SHARE, ServedCopy, serve_copy, shipped_models
from fer_lib.training.train import train

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUNS = PROJECT_ROOT / "runs"
SYNTHETIC_FOLDER = PROJECT_ROOT / "data" / "synthetic"  # ignored by git, drawn on first use
SYNTHETIC_NOTICE = ("SYNTHETIC DEMO DATA: these pages were computed on procedurally drawn faces, not on FER2013. "
                    "Point the report at the real data with `make report DATA=path/to/fer2013` "
                    "(a folder holding train.csv[.gz] and test.csv[.gz]).")


def shipped_root() -> Path:
    """Where the shipped models are, each in its committed report's model/ folder: the project's report/, or
    $FER_MODELS where it is set (a kernel inherits it, so a notebook finds the models its build found)."""
    return Path(os.environ.get("FER_MODELS") or PROJECT_ROOT / "report")


class NoRun(ConfigError):
    """A notebook needs a trained run that does not exist yet (the message says how to train it and how long)."""


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
    retrain: bool = False  # train this data's own model even where a shipped model would serve it

    @property
    def is_synthetic(self) -> bool:
        return self.dataset.synthetic

    @property
    def report_name(self) -> str:
        """report/<name>/: the dataset's name, suffixed with a non-default profile (never replacing the full report)."""
        name = self.dataset.name
        return name if self.profile == default_profile(self.dataset) else f"{name}-{self.profile}"

    @property
    def shipped_models(self) -> list[Path]:
        return [] if self.retrain else shipped_models(shipped_root())

    @cached_property
    def served(self) -> ServedCopy | None:
        """The shipped model that serves this copy of its data face by face (reordered, re-encoded, a few faces
        more or less), when no run was made from exactly these faces and this recipe."""
        if runs.find_run(self.dataset, self.config, self.runs_root, self.shipped_models) is not None:
            return None
        return serve_copy(self.dataset, self.config, self.shipped_models, cache_dir=default_cache_dir())

    @cached_property
    def run_dir(self) -> Path:
        """The finished run of this data and recipe (cached, shipped, or a shipped model that serves this copy of
        its data); never trains: NoRun says how to train it (:meth:`prepare` does)."""
        found = self.served.model_dir if self.served else runs.find_run(self.dataset, self.config, self.runs_root,
                                                                         self.shipped_models)
        if found is None:
            raise NoRun(self.no_run_message())
        return found

    @property
    def own_run_dir(self) -> Path:
        return self.runs_root / f"{self.dataset.name}-{runs.run_key(self.dataset, self.config)}"

    def prepare(self) -> Path:
        """The run, trained (or resumed) first where there is none, saying on the console how long that will take
        here, and its outputs for this data computed once: what the CLI does before the pages render."""
        try:
            self.run_dir
        except NoRun:
            seconds, basis = training_estimate(self)
            faces = len(runs.split_for(self.dataset, self.config)[0])
            resumes = (self.own_run_dir / "checkpoint.pt").exists()
            print(f"{'resuming' if resumes else 'training'} the {self.profile} recipe on {faces:,} faces of "
                  f"{self.dataset.name}: {self.config.epochs} epochs, about {duration(seconds)} on this machine "
                  f"({basis}); interrupt it at any time, the same command resumes it from its last epoch",
                  file=sys.stderr, flush=True)
            self.__dict__["run_dir"] = train(self.dataset, self.config, self.own_run_dir, device=self.device,
                                             wait=self.wait)
        self.ensure_outputs()
        return self.run_dir

    def ensure_outputs(self) -> None:
        ensure_outputs(self.run_dir, self.outputs_cache, self.dataset.train, self.val, self.dataset.test, self.device)

    @property
    def outputs_cache(self) -> Path:
        """Where the outputs the run's folder lacks for this data are computed (a shipped model's validation logits,
        a copy's test predictions): the run cache, never the committed report."""
        return self.runs_root / f"{self.dataset.name}-{runs.recorded_key(self.run_dir)}-outputs"

    @property
    def outputs_dir(self) -> Path:
        """The folder holding this data's test predictions."""
        test = self.dataset.test
        return self.run_dir if test is not None and read_test_outputs(self.run_dir, test) else self.outputs_cache

    def test_outputs(self) -> dict | None:
        """This data's test outputs (predictions, copies, the score where the labels are known), if it has a test."""
        if self.dataset.test is None:
            return None
        self.ensure_outputs()
        return read_test_outputs(self.outputs_dir, self.dataset.test)

    def no_run_message(self) -> str:
        seconds, basis = training_estimate(self)
        started = " (a run was started there and stopped: training resumes it)" if self.own_run_dir.exists() else ""
        data = str(self.data_path)
        profile = "" if self.profile == default_profile(self.dataset) else f" PROFILE={self.profile}"
        return (f"No finished training run for {self.dataset.name} with the {self.profile} recipe: not in "
                f"{self.own_run_dir}{started}, nor shipped in {shipped_root()}/*/model (no shipped model was trained "
                f"with this recipe on at least {SERVE_MIN_SHARE:.0%} of these faces). Train it first, about "
                f"{duration(seconds)} on this machine ({self.config.epochs} epochs; {basis}), then run this notebook "
                f"again: `make report DATA={data}{profile}` (trains, then renders every page) or "
                f"`python -m fer_lib train --data {data} --profile {self.profile}` (trains only).")

    @cached_property
    def split(self) -> tuple[FaceSet, FaceSet]:
        """(training, validation) faces: the run's own split, or, for a copy a shipped model serves, the user's
        faces that match the model's training and validation faces."""
        if self.served is not None:
            return self.served.split(self.dataset.train)
        return runs.split_for(self.dataset, self.config)

    @property
    def val(self) -> FaceSet:
        return self.split[1]

    @property
    def device_obj(self):
        return runs.resolve_device(self.device)

    def model(self):
        """The run's shipped model, in eval mode on the context's device (a fresh copy per call)."""
        return runs.load_trained(self.run_dir, device=self.device_obj)[0]

    @cached_property
    def _val_logits(self):
        """(plain, with the run's test-time views) validation logits (N, 7), as the run or the run cache holds them."""
        self.ensure_outputs()
        return read_val_logits(self.run_dir, self.val) or read_val_logits(self.outputs_cache, self.val)

    @property
    def val_logits(self):
        return self._val_logits[0]

    @property
    def val_logits_views(self):
        return self._val_logits[1]

    def banner(self):
        """How the faces match where a shipped model serves this copy of its data, else empty (the page template
        shows the synthetic-data warning)."""
        from IPython.display import Markdown

        if self.served is None:
            return Markdown("")
        c = self.served.summary()
        return Markdown(f"Served by the shipped model `report/{c['model']}/model`: of these training faces "
                        f"{c['exact']:,} are its own, {c['near']:,} nearly (re-encoded) and {c['new']:,} new; "
                        f"validation is the {c['by_side']['val']:,} that are its validation faces.")


def load_context(data: str = "", profile: str = "", runs: str = "", device: str = "auto", wait: bool = True,
                 retrain: bool = False, **overrides) -> Context:
    """The dataset (given, ./data, or the synthetic demo), the profile's TrainConfig and the run cache, from paths
    relative to the current directory (empty: the project's defaults)."""
    from fer_lib.data.synthetic import ensure_synthetic_dataset

    if data:
        data_path = Path(data).resolve()
    else:  # ./data when it holds a dataset, or its first dataset subfolder (the synthetic demo's aside)
        local = PROJECT_ROOT / "data"
        found = [p for p in [local, *sorted(local.glob("*/"))] if p != SYNTHETIC_FOLDER and detect_layout(p)]
        data_path = found[0] if found else None
    if data_path is None:
        print(f"WARNING: {SYNTHETIC_NOTICE}", file=sys.stderr)
        data_path = ensure_synthetic_dataset(SYNTHETIC_FOLDER, n_train=3500, n_test=700, seed=0)
    dataset = load_dataset(data_path)
    profile = profile or default_profile(dataset)
    runs_root = Path(runs).resolve() if runs else DEFAULT_RUNS
    return Context(dataset, config_for(profile, **overrides), profile, runs_root, device, data_path, wait, retrain)


# Seconds per training face per epoch at 48 px with validation on 2 CPU cores with native bf16, measured with the
# full recipe (60 epochs at 72 px: 8,858 s for 25,699 faces on an AMD EPYC); float32 elsewhere: about 3 times that.
BF16_SECONDS_PER_FACE = 8858 / (60 * 25699 * (72 / 48) ** 2)


def training_estimate(ctx: Context) -> tuple[float, str]:
    """(seconds the context's training would take here, what the estimate rests on): scaled by faces, epochs and
    input size from a finished run recorded on this CPU (in the run cache or a shipped report), else by processor."""
    faces = round(len(ctx.dataset.train) * (1 - ctx.config.val_fraction))
    work = ctx.config.epochs * min(faces, ctx.config.max_train or faces) * (ctx.config.input_size / 48) ** 2
    device = runs.resolve_device(ctx.device).type
    for run_json in sorted([*ctx.runs_root.glob("*/run.json"), *shipped_root().glob("*/model/run.json")]):
        try:
            run = json.loads(run_json.read_text())
            size = json.loads((run_json.parent / "config.json").read_text())["config"]["input_size"]
            per_face = run["train_seconds"] / (run["epochs"] * run["train_faces"] * (size / 48) ** 2)
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            continue
        if run.get("cpu") == cpu_model() and str(run.get("device", "")).startswith(device):
            return work * per_face, f"scaled from the run recorded in {run_json.parent}"
    if device == "cuda":
        return work * 1e-4, "a rough estimate for a GPU"
    work *= 2 / max(1, min(runs.default_threads(), 16))  # the measurement's 2 cores, scaled
    if cpu_has_fast_bf16():
        return work * BF16_SECONDS_PER_FACE, "estimated for a CPU with native bf16"
    return work * 3 * BF16_SECONDS_PER_FACE, "a rough estimate for a CPU without native bf16"


def duration(seconds: float) -> str:
    """'40 minutes', '2.5 hours', '3 days': a rough duration in words."""
    if seconds < 90:
        return "a minute or two"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours" if seconds < 48 * 3600 else f"{seconds / 86400:.0f} days"


def ablation_table():
    """docs/ablation.csv (the measurements behind the `full` recipe) as a DataFrame, or None."""
    import pandas as pd

    path = PROJECT_ROOT / "docs" / "ablation.csv"
    return pd.read_csv(path) if path.exists() else None
