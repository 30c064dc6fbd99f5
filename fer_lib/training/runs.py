"""Runs: the training settings and their profiles, the run folder and its key, and loading a finished run. A run
folder holds config.json (the TrainConfig, the data fingerprint, the initial weights and the run key, their hash),
history.csv (one row per epoch), checkpoint.pt (what resuming reads) and best.pt (the selected epoch's weights);
the finish step (finish.py) then writes weights.pt (the shipped float16 copy), faces.npz (the keys of its faces),
calibration.json, val_logits.npz, the test outputs, and run.json last (provenance, the test-time views, the kept
weights' score on training faces)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fer_lib import ConfigError
from fer_lib.core.io import array_sha256, cpu_has_fast_bf16, default_cache_dir
from fer_lib.data.duplicates import cached_duplicates
from fer_lib.data.layouts import Dataset, FaceSet, train_val_split
from fer_lib.model.network import build_model, resolve_weights
from fer_lib.training.augment import AugmentConfig

# train_loss is the optimised (label-smoothed, class-weighted) loss; train_ce plain cross-entropy on the same batches,
# as val_loss is. With an EMA, val_* score the averaged weights (what is shipped) and val_acc_raw the stepped ones.
# train_eval_* score the shipped weights on a fixed sample of training faces as validation is scored: like for like.
HISTORY_COLUMNS = ["epoch", "train_loss", "train_ce", "train_acc", "val_loss", "val_acc", "val_acc_tta",
                   "val_acc_raw", "val_acc_raw_tta", "train_eval_acc", "train_eval_loss", "lr", "seconds"]
WEIGHTS_FILE = "weights.pt"  # a finished run's selected weights as a float16 state dict: what is shipped
TRAIN_EVAL_SAMPLE = 1000  # training faces scored each epoch in eval mode without augmentation (like for like)
RUN_FILES = ("config.json", "history.csv", "run.json", WEIGHTS_FILE)  # all a finished run needs to be reused


def setting(default, help: str, choices: tuple = ()):  # noqa: A002 - argparse's own word
    """A TrainConfig field whose help text (and choices) the command line shows: the flags come from here."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    epochs: int = setting(30, "number of epochs")
    batch_size: int = setting(128, "faces per optimisation step (the last partial batch is dropped)")
    lr: float = setting(2e-3, "peak learning rate of the one-cycle schedule")
    weight_decay: float = setting(0.05, "decoupled weight decay (not on batch-norm weights and biases)")
    optimizer: str = setting("adamw", "adamw, or sgd (Nesterov, momentum 0.9)", ("adamw", "sgd"))
    label_smoothing: float = setting(0.1, "label smoothing of the training loss")
    class_weighting: str = setting("none", "none, or sqrt: loss weights 1/sqrt(class count)", ("none", "sqrt"))
    input_size: int = setting(48, "faces are resized to this side before the network (full profile: 72)")
    val_fraction: float = setting(0.1, "share of the training faces held out for validation")
    split: str = setting("grouped", "grouped: copies of a face stay on one side; random: stratified only",
                         ("grouped", "random"))
    ema_decay: float = setting(0.0, "moving average of the weights per step, evaluated and shipped (0 = off)")
    cutmix: float = setting(0.0, "CutMix a batch with this probability (0 = off)")
    seed: int = setting(0, "seeds the validation split, the initial weights and the shuffling")
    weights: str = setting("imagenet", "initial weights: imagenet (torch's cache), random, or a ResNet18 .pth path")
    max_train: int = setting(0, "train on at most this many faces (0 = all)")
    channels_last: bool = setting(True, "NHWC memory format (faster convolutions on CPUs)")
    precision: str = setting("auto", "auto: bf16 autocast where it is native (CUDA, AMX, AVX-512 BF16), else fp32",
                             ("auto", "fp32", "bf16"))
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{**d, "augment": AugmentConfig(**d.get("augment", {}))})


# Values not named keep the TrainConfig defaults (docs/ablation.csv has the measurements behind `full`).
PROFILES: dict[str, dict] = {
    "quick": {"epochs": 3, "max_train": 6000},  # proves the pipeline in minutes
    # SGD one-cycle, faces upsampled to 72 px so layer4 keeps a 3x3 map: ~100 min on 2 CPU cores with native bf16
    "full": {"epochs": 60, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "input_size": 72,
             "ema_decay": 0.999},
    # the published kind of schedule, for a GPU: 300 epochs at 96 px
    "long": {"epochs": 300, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "input_size": 96},
    "synthetic": {"epochs": 6, "lr": 3e-3},
    "smoke": {"epochs": 1, "max_train": 256, "batch_size": 64},  # tests: seconds, proves the plumbing only
}


def config_for(profile: str, **overrides) -> TrainConfig:
    """The TrainConfig of a named profile, with explicit settings taking precedence."""
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    return TrainConfig.from_dict({**PROFILES[profile], **overrides})


def run_record(dataset: Dataset, config: TrainConfig) -> dict:
    """config.json: the settings, the training faces' sha256 (whatever the layout), the initial weights actually
    used (a file's sha256, or "random" where the ImageNet file is missing) and ``run_key``, the hash of these that
    names the run (a fallback to random is the run that asks for random)."""
    faces = dataset.train
    record = {"config": asdict(config), "data_fingerprint": array_sha256(faces.images, faces.labels.astype(np.int64)),
              "dataset": dataset.name, "weights_used": resolve_weights(config.weights, warn=False)[1]}
    blob = json.dumps({"config": {**record["config"], "weights": record["weights_used"]},
                       "data_fingerprint": record["data_fingerprint"]}, sort_keys=True)
    return {**record, "run_key": hashlib.sha256(blob.encode()).hexdigest()[:12]}


def run_key(dataset: Dataset, config: TrainConfig) -> str:
    return run_record(dataset, config)["run_key"]


def recorded_key(run_dir: Path) -> str | None:
    """The run key in ``run_dir``'s config.json, or None where there is none."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())["run_key"]
    except (OSError, ValueError, KeyError):
        return None


def is_complete(run_dir: Path) -> bool:
    return all((Path(run_dir) / f).is_file() for f in RUN_FILES)


def find_run(dataset: Dataset, config: TrainConfig, runs_root: Path, shipped: list[Path] = ()) -> Path | None:
    """The finished run of (config, data): the cache's ``runs_root/<dataset>-<key>``, else a shipped one, or None."""
    key = run_key(dataset, config)
    for run_dir in (Path(runs_root) / f"{dataset.name}-{key}", *shipped):
        if is_complete(run_dir) and recorded_key(run_dir) == key:
            return Path(run_dir)
    return None


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16": what ``precision`` means on ``device`` ("auto" picks bf16 only where it is fast)."""
    if precision != "auto":
        return precision
    fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
    return "bf16" if fast else "fp32"


def default_threads() -> int:
    """All cores, unless OMP_NUM_THREADS says otherwise (e.g. to share the machine with another run)."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def resolve_device(device: str = "auto") -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def read_history(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / "history.csv")


def selected_row(history: list[dict], averaged: bool) -> dict:
    """The epoch whose weights are shipped: with an average of the weights the last (the schedule anneals to zero;
    a maximum over noisy epochs would add selection bias), else the first best validation accuracy with flip views."""
    return history[-1] if averaged else max(history, key=lambda r: r["val_acc_tta"])


def split_for(dataset: Dataset, config: TrainConfig) -> tuple[FaceSet, FaceSet]:
    """The run's train/validation faces: the seeded stratified split (grouped or not), then ``max_train`` if set."""
    grouped = config.split == "grouped"
    groups = cached_duplicates(dataset.train.images, cache_dir=default_cache_dir()).group if grouped else None
    train_set, val_set = train_val_split(dataset.train, config.val_fraction, config.seed, groups=groups,
                                         cache_dir=default_cache_dir())
    if config.max_train and config.max_train < len(train_set):
        train_set = train_set.subset(np.random.default_rng(config.seed).permutation(len(train_set))[:config.max_train])
    return train_set, val_set


def train_eval_indices(n_train: int, seed: int) -> np.ndarray:
    """The training faces scored like validation faces (history's train_eval_*, run.json's ``train_eval``)."""
    return np.random.default_rng(seed).permutation(n_train)[:TRAIN_EVAL_SAMPLE]


def run_lock(run_dir: Path) -> Path:
    """The lock file of a run folder, beside it (so that starting over may empty the folder itself)."""
    return Path(run_dir).parent / f".{Path(run_dir).name}.lock"


def load_trained_weights(path: Path, device: str | torch.device = "cpu"):
    """The model in eval mode, in float32, from a state dict (the shipped float16 one, or best.pt); built without
    touching the caller's global random state (initialising a ResNet18 draws from it)."""
    with torch.random.fork_rng(devices=[]):
        model = build_model("random")[0]
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval()


def load_trained(run_dir: Path, device: str | torch.device = "cpu"):
    """(model in eval mode, TrainConfig) of a finished run: its shipped weights."""
    config = TrainConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text())["config"])
    return load_trained_weights(Path(run_dir) / WEIGHTS_FILE, device), config


def prediction_tta(run_dir: Path) -> str:
    """The test-time views a finished run's predictions use (chosen on validation, in run.json)."""
    return json.loads((Path(run_dir) / "run.json").read_text())["tta"]
