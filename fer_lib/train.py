"""Training: one flat loop, per-epoch history and atomic checkpoints, exact resume, and the run cache.

A run directory holds
  config.json      the TrainConfig and the data fingerprint (what the run's cache key hashes)
  history.csv      one row per epoch: train/val loss and accuracy, learning rate, seconds
  checkpoint.pt    latest state (model, optimizer, scheduler, epoch, best_val_acc, history), every epoch
  best.pt          the weights of the epoch with the best validation accuracy (model selection)
  run.json         written last: provenance (weights origin, device, library versions, timings)
Each epoch draws its shuffling, augmentation and dropout randomness from generators seeded with
(seed, epoch), so a resumed run repeats exactly what an uninterrupted one would have done.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import CLASS_NAMES
from .augment import AugmentConfig, augment
from .data import Dataset, FaceSet, atomic_write, train_val_split
from .evaluate import accuracy, predict_logits
from .model import build_model, preprocess

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


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
    seed: int = 0
    weights: str = "imagenet"  # "imagenet" (from torch's cache when present), "random", or a path
    max_train: int = 0  # use only this many training faces (0 = all): smoke tests and quick runs
    channels_last: bool = True  # NHWC memory format: faster convolutions in oneDNN on this CPU
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        aug = AugmentConfig(**d.pop("augment", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training settings: {sorted(unknown)}")
        return cls(augment=aug, **d)


# Profiles: `quick` proves the pipeline in minutes; `full` is the recipe for real data (README has the
# ablation behind it). Values not named keep the TrainConfig defaults.
PROFILES: dict[str, dict] = {
    "quick": {"epochs": 3, "max_train": 6000},
    "full": {"epochs": 22},  # about 55 minutes on 2 CPU cores at 48x48
    "synthetic": {"epochs": 6, "lr": 3e-3},
    "smoke": {"epochs": 1, "max_train": 256, "batch_size": 64},  # tests: seconds, proves the plumbing only
}


def config_for(profile: str, **overrides) -> TrainConfig:
    """The TrainConfig of a named profile, with explicit settings taking precedence."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    return TrainConfig.from_dict({**PROFILES[profile], **overrides})


def data_fingerprint(faces: FaceSet) -> str:
    """sha256 of the training images and labels: the same faces give the same run, whatever the layout."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(faces.images).tobytes())
    h.update(np.ascontiguousarray(faces.labels).astype(np.int64).tobytes())
    return h.hexdigest()


def run_key(config: TrainConfig, fingerprint: str) -> str:
    blob = json.dumps({"config": asdict(config), "data": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_threads() -> int:
    """All cores, unless OMP_NUM_THREADS says otherwise (e.g. to share the machine with another run)."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def class_weights(labels: np.ndarray, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    if mode != "sqrt":
        raise ValueError(f"class_weighting must be 'none' or 'sqrt', got {mode!r}")
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).clip(min=1)
    w = 1 / np.sqrt(counts)
    return torch.tensor(w / (w * counts).sum() * counts.sum(), dtype=torch.float32)  # mean weight per face = 1


def make_optimizer(model, config: TrainConfig, steps_per_epoch: int):
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]  # no decay on BN and biases
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=config.lr)
    elif config.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
    # OneCycleLR needs a few steps per phase; tiny smoke runs simply stop before the schedule ends
    total_steps = max(config.epochs * steps_per_epoch, 8)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps, pct_start=0.25)
    return opt, sched


def train_step(model, optimizer, scheduler, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
               loss_weight: torch.Tensor | None, generator: torch.Generator, device: torch.device) -> tuple[float, int]:
    """One optimisation step on a uint8 batch (B, 48, 48); returns (summed loss, number correct)."""
    x = preprocess(images, config.input_size)  # (B, 3, S, S) normalised
    x = augment(x, config.augment, generator).to(device)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = labels.to(device)
    logits = model(x)
    loss = F.cross_entropy(logits, y, weight=loss_weight, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item() * len(y), (logits.argmax(1) == y).sum().item()


def _write_history(path: Path, history: list[dict]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, HISTORY_COLUMNS)
            w.writeheader()
            w.writerows(history)

    atomic_write(path, write)


def read_history(run_dir: Path):
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "history.csv")


def train(dataset: Dataset, config: TrainConfig, run_dir: Path, device: str = "auto", resume: bool = True,
          stop_after: int | None = None, progress: bool = True) -> Path:
    """Train (or continue training) into ``run_dir``; returns it. ``stop_after`` ends early (tests)."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    dev = resolve_device(device)
    torch.set_num_threads(default_threads())
    train_set, val_set = split_for(dataset, config)
    fingerprint = data_fingerprint(dataset.train)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(
        {"config": asdict(config), "data_fingerprint": fingerprint, "dataset": dataset.name,
         "run_key": run_key(config, fingerprint)}, indent=2)))

    torch.manual_seed(config.seed)  # the initial head weights
    model, weights_origin = build_model(config.weights)
    model.to(dev)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(train_set) // config.batch_size)  # the last partial batch is dropped
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch)
    loss_weight = class_weights(train_set.labels, config.class_weighting)
    loss_weight = None if loss_weight is None else loss_weight.to(dev)
    start_epoch, best_val_acc, history = 0, -1.0, []

    ckpt_path = run_dir / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=True)
        if ckpt["config"] != asdict(config):  # resuming another recipe would silently mix two runs
            changed = sorted(k for k in ckpt["config"] if ckpt["config"][k] != asdict(config).get(k))
            raise ValueError(f"{ckpt_path}: checkpoint of a different configuration (differs in {changed}); "
                             "use another run directory, or --no-resume to start over")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_val_acc, history = ckpt["epoch"], ckpt["best_val_acc"], ckpt["history"]
        weights_origin = ckpt.get("weights_origin", weights_origin)
        if progress and start_epoch < config.epochs:
            print(f"resuming {run_dir} at epoch {start_epoch + 1}/{config.epochs}")

    images = torch.from_numpy(train_set.images)
    labels = torch.from_numpy(train_set.labels)
    for epoch in range(start_epoch, config.epochs):
        if stop_after is not None and epoch >= stop_after:
            return run_dir
        t0 = time.perf_counter()
        # -- randomness of this epoch depends on (seed, epoch) only: resume repeats it exactly
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout
        order = torch.randperm(len(images), generator=generator)
        lr = scheduler.get_last_lr()[0]
        # -- train
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                   leave=False, mininterval=2)
        for step in bar:
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            loss, ok = train_step(model, optimizer, scheduler, images[idx], labels[idx], config, loss_weight,
                                  generator, dev)
            loss_sum, correct, seen = loss_sum + loss, correct + ok, seen + len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        # -- evaluate on the validation split
        val_logits = predict_logits(model, val_set.images, config.input_size, device=dev)
        val_labels = torch.from_numpy(val_set.labels)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "val_loss": F.cross_entropy(val_logits, val_labels).item(),
               "val_acc": accuracy(val_logits, val_labels), "lr": lr, "seconds": time.perf_counter() - t0}
        history.append(row)
        # -- checkpoint (atomically: an interrupted write never corrupts the run)
        if row["val_acc"] > best_val_acc:
            best_val_acc = row["val_acc"]
            atomic_write(run_dir / "best.pt", lambda tmp: torch.save(model.state_dict(), tmp))
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "best_val_acc": best_val_acc,
                 "history": history, "config": asdict(config), "weights_origin": weights_origin}
        atomic_write(ckpt_path, lambda tmp: torch.save(state, tmp))
        _write_history(run_dir / "history.csv", history)
        if progress:
            print(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | "
                  f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} | {row['seconds']:.0f}s", flush=True)

    provenance = {"weights_origin": weights_origin, "device": str(dev), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "python": platform.python_version(), "epochs": len(history),
                  "train_faces": len(train_set), "val_faces": len(val_set), "best_val_acc": best_val_acc,
                  "train_seconds": sum(r["seconds"] for r in history)}
    atomic_write(run_dir / "run.json", lambda tmp: tmp.write_text(json.dumps(provenance, indent=2)))
    return run_dir


def split_for(dataset: Dataset, config: TrainConfig) -> tuple[FaceSet, FaceSet]:
    """The run's train/validation faces: the seeded stratified split, then ``max_train`` if set."""
    train_set, val_set = train_val_split(dataset.train, config.val_fraction, config.seed)
    if config.max_train and config.max_train < len(train_set):
        train_set = train_set.subset(np.random.default_rng(config.seed).permutation(len(train_set))[:config.max_train])
    return train_set, val_set


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / "run.json").exists()


def ensure_run(dataset: Dataset, config: TrainConfig, runs_root: Path, device: str = "auto",
               progress: bool = True) -> Path:
    """The run for (config, data): loaded when it exists and is complete, else trained or resumed."""
    run_dir = Path(runs_root) / f"{dataset.name}-{run_key(config, data_fingerprint(dataset.train))}"
    if is_complete(run_dir):
        return run_dir
    return train(dataset, config, run_dir, device=device, progress=progress)


def load_trained(run_dir: Path, device: str = "cpu", which: str = "best"):
    """(model in eval mode, TrainConfig) from a run directory; ``which`` is "best" or "last"."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "config.json").read_text())
    config = TrainConfig.from_dict(meta["config"])
    model, _ = build_model("random")
    if which == "best" and (run_dir / "best.pt").exists():
        state = torch.load(run_dir / "best.pt", map_location=device, weights_only=True)
    else:
        state = torch.load(run_dir / "checkpoint.pt", map_location=device, weights_only=True)["model"]
    model.load_state_dict(state)
    return model.to(device).eval(), config
