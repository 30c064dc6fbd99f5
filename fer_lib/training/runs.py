"""Runs: the training configuration and its profiles, the run folder, its cache key, and loading a finished run.

A run directory holds
  config.json      the TrainConfig, the data fingerprint and the initial weights (what the run's cache key hashes)
  history.csv      one row per epoch: train/val loss and accuracy, learning rate, seconds
  checkpoint.pt    latest state (model, EMA, optimizer, scheduler, epoch, history), every epoch
  best.pt          the weights of the selected epoch (runs.selected_row: the last one with an EMA)
  weights.pt       the shipped float16 copy of best.pt
  calibration.json, predictions.csv, test_duplicates.csv, test_outputs.json: what the finished run knows about its
                   data (predict.py), written before run.json, or on first use for runs that predate them
  run.json         written last: provenance (weights origin, device, CPU, library versions, timings, chosen TTA)
Training itself (the loop) is in train.py, which builds on this module.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fer_lib import ConfigError
from fer_lib.core.io import array_sha256, cpu_has_fast_bf16, default_cache_dir
from fer_lib.data.duplicates import cached_duplicates
from fer_lib.data.layouts import Dataset, FaceSet, train_val_split
from fer_lib.model.network import build_model, resolve_weights
from fer_lib.training.augment import AugmentConfig

# train_loss is the optimised (label-smoothed, class-weighted) loss; train_ce is plain cross-entropy on the same
# batches, the definition val_loss uses, so the two curves compare like with like. val_acc_tta averages each
# validation face with its mirror image, as the test predictions do.
# With an EMA of the weights, val_loss / val_acc / val_acc_tta are those of the averaged weights (what is selected
# and shipped) and val_acc_raw those of the weights the optimiser steps (val_acc_raw_tta only without an EMA, where
# they agree).
# train_eval_acc and train_eval_loss score the shipped weights on a fixed sample of training faces exactly as
# validation is scored (eval mode: dropout off; no augmentation, no TTA; plain cross-entropy): the like-for-like
# comparison for overfitting. Histories written before train_eval_loss existed simply lack that column.
HISTORY_COLUMNS = ["epoch", "train_loss", "train_ce", "train_acc", "val_loss", "val_acc", "val_acc_tta",
                   "val_acc_raw", "val_acc_raw_tta", "train_eval_acc", "train_eval_loss", "lr", "seconds"]
SPLITS = ("grouped", "random")
PRECISIONS = ("auto", "fp32", "bf16")
WEIGHTS_FILE = "weights.pt"  # a finished run's best weights as a float16 state dict: what is shipped
RUN_FILES = ("config.json", "history.csv", "run.json", WEIGHTS_FILE)  # all a finished run needs to be reused


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3  # peak learning rate of the one-cycle schedule
    weight_decay: float = 0.05  # decoupled (AdamW): multiplied by the learning rate at every step
    optimizer: str = "adamw"  # "adamw" or "sgd" (Nesterov, momentum 0.9); 4-epoch probe: 43% vs 28% val
    label_smoothing: float = 0.1
    class_weighting: str = "none"  # "none" or "sqrt": loss weight 1/sqrt(class count), lifts Disgust
    input_size: int = 48  # faces are resized to this before the network (48 keeps it cheapest)
    val_fraction: float = 0.1
    split: str = "grouped"  # "grouped": copies of a face (exact or near) stay on one side; "random": the old split
    ema_decay: float = 0.0  # exponential moving average of the weights per step (0 = off); evaluated and shipped
    cutmix: float = 0.0  # probability that a batch is CutMixed (augment.cutmix; 0 = off)
    seed: int = 0
    weights: str = "imagenet"  # "imagenet" (from torch's cache when present), "random", or a path
    max_train: int = 0  # use only this many training faces (0 = all): smoke tests and quick runs
    channels_last: bool = True  # NHWC memory format: faster convolutions in oneDNN on this CPU
    precision: str = "auto"  # "auto" (bf16 autocast where the hardware has it, else fp32), "fp32" or "bf16"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        aug = AugmentConfig(**d.pop("augment", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training settings: {sorted(unknown)}")
        return cls(augment=aug, **d)


# Profiles: `quick` proves the pipeline in minutes; `full` is the recipe for real data (README has the
# ablation behind it). Values not named keep the TrainConfig defaults.
PROFILES: dict[str, dict] = {
    "quick": {"epochs": 3, "max_train": 6000},
    # SGD Nesterov one-cycle, faces upsampled to 72 px so layer4 keeps a 3x3 map (48 px leaves 2x2): about 100
    # minutes on 2 CPU cores with native bf16 (docs/ablation.csv has the measurements behind each choice)
    "full": {"epochs": 60, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "input_size": 72,
             "ema_decay": 0.999},
    # the published kind of schedule, for a GPU: 300 epochs at 96 px (hours there, days on 2 CPU cores)
    "long": {"epochs": 300, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "input_size": 96},
    "synthetic": {"epochs": 6, "lr": 3e-3},
    "smoke": {"epochs": 1, "max_train": 256, "batch_size": 64},  # tests: seconds, proves the plumbing only
}


def config_for(profile: str, **overrides) -> TrainConfig:
    """The TrainConfig of a named profile, with explicit settings taking precedence."""
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    return TrainConfig.from_dict({**PROFILES[profile], **overrides})


def data_fingerprint(faces: FaceSet) -> str:
    """sha256 of the training images and labels: the same faces give the same run, whatever the layout."""
    return array_sha256(faces.images, faces.labels.astype(np.int64))


# settings added after a model was shipped, with the value that means "off": left out of the run key when off,
# so the runs made before them keep their keys (and the shipped model stays valid)
LATER_SETTINGS = {"cutmix": 0.0}


def run_key(config: TrainConfig, fingerprint: str, weights_used: str) -> str:
    """The run cache key: the settings, the training faces and the initial weights actually used (a file's
    sha256 or "random"), so a run that fell back to random init is not reused once the real weights appear."""
    settings = {**asdict(config), "weights": weights_used}
    for name, off in LATER_SETTINGS.items():  # settings added after runs were shipped count only when set
        if settings[name] == off:
            del settings[name]
    blob = json.dumps({"config": settings, "data": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16": what ``precision`` means on ``device`` ("auto" picks bf16 only where it is fast)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def default_threads() -> int:
    """All cores, unless OMP_NUM_THREADS says otherwise (e.g. to share the machine with another run)."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def read_history(run_dir: Path):
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "history.csv")


def selected_row(history: list[dict], averaged: bool) -> dict:
    """The epoch whose weights are shipped (best.pt). With an average of the weights (``averaged``): the last
    epoch, because the one-cycle schedule anneals the rate to zero and the average smooths the end, so taking
    the maximum over noisy epochs would only add selection bias. Without one: the first epoch with the highest
    validation accuracy with flip views, as predictions are made (plain accuracy where flip was not scored)."""
    if averaged:
        return history[-1]
    return max(history, key=lambda r: r["val_acc_tta"] if r.get("val_acc_tta") is not None else r["val_acc"])


def selection_rule(averaged: bool) -> str:
    """The words run.json records for selected_row's choice."""
    if averaged:
        return "the final epoch's averaged weights (the schedule anneals to zero; no selection over epochs)"
    return "the epoch with the highest validation accuracy with flip views"


def split_for(dataset: Dataset, config: TrainConfig) -> tuple[FaceSet, FaceSet]:
    """The run's train/validation faces: the seeded stratified split (copies of a face kept on one side unless
    ``config.split`` is "random"), then ``max_train`` if set."""
    if config.split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {config.split!r}")
    groups = None
    if config.split == "grouped":
        groups = cached_duplicates(dataset.train.images, cache_dir=default_cache_dir()).group
    train_set, val_set = train_val_split(dataset.train, config.val_fraction, config.seed, groups=groups,
                                         cache_dir=default_cache_dir())
    if config.max_train and config.max_train < len(train_set):
        train_set = train_set.subset(np.random.default_rng(config.seed).permutation(len(train_set))[:config.max_train])
    return train_set, val_set


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / "run.json").exists()


@dataclass(frozen=True)
class RunIdentity:
    """What a run depends on besides its settings, computed once (hashing the faces and a weights file costs
    seconds) and passed down: the training faces' fingerprint, the initial weights, and the cache key."""

    fingerprint: str
    weights_path: Path | None  # the file training starts from, None for random initialisation
    weights_used: str  # "sha256:<hex>" of that file, or "random"
    key: str


def run_identity(dataset: Dataset, config: TrainConfig, warn: bool = True) -> RunIdentity:
    weights_path, weights_used = resolve_weights(config.weights, warn=warn)
    fingerprint = data_fingerprint(dataset.train)
    return RunIdentity(fingerprint, weights_path, weights_used, run_key(config, fingerprint, weights_used))


def run_lock(run_dir: Path) -> Path:
    """The lock file of a run folder, beside it (so that starting over may empty the folder itself)."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def matches_run(run_dir: Path, run_key_expected: str) -> bool:
    """Whether ``run_dir`` holds a finished run with this cache key (e.g. the model shipped with a report)."""
    try:
        meta = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("run_key") == run_key_expected and all((Path(run_dir) / f).is_file() for f in RUN_FILES)


def load_trained(run_dir: Path, device: str | torch.device = "cpu", which: str = "best"):
    """(model in eval mode, TrainConfig) from a run directory.

    ``which="best"``: the shipped float16 weights of a finished run (``weights.pt``), else the best-validation
    checkpoint of a run in progress; ``which="last"``: the latest checkpoint.
    """
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "config.json").read_text())
    config = TrainConfig.from_dict(meta["config"])
    if which == "best" and (run_dir / WEIGHTS_FILE).exists():
        return load_trained_weights(run_dir / WEIGHTS_FILE, device), config
    model = blank_model()
    if which == "best" and (run_dir / "best.pt").exists():
        state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    else:
        state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(state)
    return model.to(device).eval(), config


def blank_model():
    """The network with random weights that a state dict is then loaded into, built without touching the caller's
    global random state (initialising a ResNet18 draws from it)."""
    with torch.random.fork_rng(devices=[]):
        return build_model("random")[0]


def load_trained_weights(path: Path, device: str | torch.device = "cpu"):
    """The model in eval mode, in float32, from a shipped float16 state dict."""
    model = blank_model()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval()


def prediction_tta(run_dir: Path) -> str:
    """The test-time views a run's predictions use (chosen on validation; "flip" for runs that predate the choice)."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text()).get("tta", "flip")
    except (OSError, ValueError):
        return "flip"


def cache_key(dataset: Dataset, config: TrainConfig) -> str:
    """The key a run of (config, data) is cached under (looking a run up is not training: no weights warning)."""
    return run_identity(dataset, config, warn=False).key
