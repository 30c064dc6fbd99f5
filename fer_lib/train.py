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

from . import CLASS_NAMES, ConfigError
from .augment import AugmentConfig, augment
from .data import Dataset, FaceSet, train_val_split
from .duplicates import cached_duplicates
from .io import atomic_write, default_cache_dir, cpu_has_fast_bf16, cpu_model, file_sha256
from .evaluate import TTA_MODES, accuracy, predict_logits
from .model import build_model, imagenet_weights_path, preprocess, resolve_weights

# train_loss is the optimised (label-smoothed, class-weighted) loss; train_ce is plain cross-entropy on the same
# batches, the definition val_loss uses, so the two curves compare like with like. val_acc_tta averages each
# validation face with its mirror image, as the test predictions do.
# With an EMA of the weights, val_loss / val_acc / val_acc_tta are those of the averaged weights (what is selected
# and shipped) and val_acc_raw those of the weights the optimiser steps (val_acc_raw_tta only without an EMA, where they agree).
# train_eval_acc scores the shipped weights on a fixed sample of training faces exactly as validation is scored
# (eval mode, no augmentation, no TTA): the like-for-like comparison for overfitting.
HISTORY_COLUMNS = ["epoch", "train_loss", "train_ce", "train_acc", "val_loss", "val_acc", "val_acc_tta",
                   "val_acc_raw", "val_acc_raw_tta", "train_eval_acc", "lr", "seconds"]
TRAIN_EVAL_SAMPLE = 1000  # training faces scored each epoch in eval mode without augmentation (like for like)
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
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(faces.images).tobytes())
    h.update(np.ascontiguousarray(faces.labels).astype(np.int64).tobytes())
    return h.hexdigest()


def run_key(config: TrainConfig, fingerprint: str, weights_used: str) -> str:
    """The run cache key: the settings, the training faces and the initial weights actually used (a file's
    sha256 or "random"), so a run that fell back to random init is not reused once the real weights appear."""
    settings = {**asdict(config), "weights": weights_used}
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


def class_weights(labels: np.ndarray, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    if mode != "sqrt":
        raise ConfigError(f"class_weighting must be 'none' or 'sqrt', got {mode!r}")
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
        raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
    # OneCycleLR needs a few steps per phase; tiny smoke runs simply stop before the schedule ends
    total_steps = max(config.epochs * steps_per_epoch, 8)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps, pct_start=0.25)
    return opt, sched


def train_step(model, optimizer, scheduler, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
               loss_weight: torch.Tensor | None, generator: torch.Generator, device: torch.device,
               precision: str = "fp32") -> tuple[float, float, int]:
    """One optimisation step on a uint8 batch (B, 48, 48); returns (summed loss, summed plain CE, number correct)."""
    x = preprocess(images, config.input_size)  # (B, 3, S, S) normalised
    x = augment(x, config.augment, generator).to(device)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = labels.to(device)
    # bf16 autocast runs convolutions and matmuls in bfloat16, keeps weights, BN and the loss in float32
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x)
    logits = logits.float()
    loss = F.cross_entropy(logits, y, weight=loss_weight, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    plain_ce = F.cross_entropy(logits.detach(), y, reduction="sum").item()
    return loss.item() * len(y), plain_ce, (logits.argmax(1) == y).sum().item()


def make_ema(model, decay: float):
    """An exponential moving average of ``model``'s weights and batch-norm statistics (None when decay is 0)."""
    if not decay:
        return None
    if not 0 < decay < 1:
        raise ConfigError(f"ema_decay must be 0 (off) or in (0, 1), got {decay}")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def validate(model, images: np.ndarray, labels: torch.Tensor, input_size: int, device, flip: bool = True) -> dict:
    """Validation loss and accuracy (plain, and with flip TTA unless ``flip`` is False) in float32, like every
    prediction the report makes."""
    logits = predict_logits(model, images, input_size, device=device)
    out = {"loss": F.cross_entropy(logits, labels).item(), "acc": accuracy(logits, labels), "acc_tta": None}
    if flip:
        mirrored = predict_logits(model, np.ascontiguousarray(images[:, :, ::-1]), input_size, device=device)
        out["acc_tta"] = accuracy((logits + mirrored) / 2, labels)  # = predict_logits(tta="flip"), one pass fewer
    return out


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


def _check_resumable(ckpt: dict, ckpt_path: Path, config: TrainConfig) -> None:
    if ckpt["config"] != asdict(config):  # resuming another recipe would silently mix two runs
        changed = sorted(k for k in ckpt["config"] if ckpt["config"][k] != asdict(config).get(k))
        raise ConfigError(f"{ckpt_path}: checkpoint of a different configuration (differs in {changed}); "
                          "use another run directory, or --no-resume to start over")


def train(dataset: Dataset, config: TrainConfig, run_dir: Path, device: str = "auto", resume: bool = True,
          stop_after: int | None = None, progress: bool = True) -> Path:
    """Train (or continue training) into ``run_dir``; returns it. ``stop_after`` ends early (tests).

    Everything that can be refused (settings, weights file, an incompatible checkpoint) is checked before
    anything is written, so a refused run leaves ``run_dir`` as it was.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    dev = resolve_device(device)
    precision = resolve_precision(config.precision, dev)
    weights_path, weights_used = resolve_weights(config.weights)
    torch.set_num_threads(default_threads())
    train_set, val_set = split_for(dataset, config)
    fingerprint = data_fingerprint(dataset.train)
    ckpt_path = run_dir / "checkpoint.pt"
    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=True)
        _check_resumable(ckpt, ckpt_path, config)

    # the initial head weights come from the run's seed, without touching the caller's global RNG
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model, weights_origin = build_model(weights_path)
    if weights_path is None and config.weights != "random":
        weights_origin = f"random initialisation (ImageNet weights not found at {imagenet_weights_path()})"
    model.to(dev)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(train_set) // config.batch_size)  # the last partial batch is dropped
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch)
    loss_weight = class_weights(train_set.labels, config.class_weighting)
    loss_weight = None if loss_weight is None else loss_weight.to(dev)
    ema = make_ema(model, config.ema_decay)
    start_epoch, best_val_acc, history = 0, -1.0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_val_acc, history = ckpt["epoch"], ckpt["best_val_acc"], ckpt["history"]
        weights_origin = ckpt.get("weights_origin", weights_origin)
        if progress and start_epoch < config.epochs:
            print(f"resuming {run_dir} at epoch {start_epoch + 1}/{config.epochs}")

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(
        {"config": asdict(config), "data_fingerprint": fingerprint, "dataset": dataset.name,
         "weights_used": weights_used, "run_key": run_key(config, fingerprint, weights_used)}, indent=2)))
    images = torch.from_numpy(train_set.images)
    labels = torch.from_numpy(train_set.labels)
    val_labels = torch.from_numpy(val_set.labels)
    train_sample = np.random.default_rng(config.seed).permutation(len(train_set))[:TRAIN_EVAL_SAMPLE]
    for epoch in range(start_epoch, config.epochs):
        if stop_after is not None and epoch >= stop_after:
            return run_dir
        t0 = time.perf_counter()
        # -- randomness of this epoch depends on (seed, epoch) only: resume repeats it exactly
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(images), generator=generator)
        lr = scheduler.get_last_lr()[0]
        # -- train
        model.train()
        loss_sum, ce_sum, correct, seen = 0.0, 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                   leave=False, mininterval=2)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(config.seed * 100_003 + epoch)  # dropout, in a forked RNG: the caller's is untouched
            for step in bar:
                idx = order[step * config.batch_size:(step + 1) * config.batch_size]
                loss, ce, ok = train_step(model, optimizer, scheduler, images[idx], labels[idx], config, loss_weight,
                                          generator, dev, precision)
                if ema is not None:
                    ema.update_parameters(model)
                loss_sum, ce_sum, correct, seen = loss_sum + loss, ce_sum + ce, correct + ok, seen + len(idx)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        # -- evaluate on the validation split (float32, like every prediction the report makes)
        # with an EMA, the stepped weights are scored without TTA only: evaluation costs about 4 s per 1,000 faces
        raw = validate(model, val_set.images, val_labels, config.input_size, dev, flip=ema is None)
        shipped_model = model if ema is None else ema.module  # the weights that are selected and shipped
        val = raw if ema is None else validate(shipped_model, val_set.images, val_labels, config.input_size, dev)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_ce": ce_sum / seen,
               "train_acc": correct / seen, "val_loss": val["loss"], "val_acc": val["acc"],
               "val_acc_tta": val["acc_tta"], "val_acc_raw": raw["acc"], "val_acc_raw_tta": raw["acc_tta"],
               "train_eval_acc": accuracy(predict_logits(shipped_model, train_set.images[train_sample],
                                                         config.input_size, device=dev), labels[train_sample]),
               "lr": lr, "seconds": time.perf_counter() - t0}
        history.append(row)
        # -- checkpoint (atomically: an interrupted write never corrupts the run)
        if row["val_acc"] > best_val_acc:
            best_val_acc = row["val_acc"]
            atomic_write(run_dir / "best.pt", lambda tmp: torch.save(shipped_model.state_dict(), tmp))
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "best_val_acc": best_val_acc,
                 "history": history, "config": asdict(config), "weights_origin": weights_origin}
        if ema is not None:
            state["ema"] = ema.state_dict()
        atomic_write(ckpt_path, lambda tmp: torch.save(state, tmp))
        _write_history(run_dir / "history.csv", history)
        if progress:
            print(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.3f} (CE {row['train_ce']:.3f}) "
                  f"acc {row['train_acc']:.3f} | val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} "
                  f"(flip TTA {row['val_acc_tta']:.3f}) | {row['seconds']:.0f}s", flush=True)

    provenance = {"weights_origin": weights_origin, "weights_used": weights_used, "device": str(dev),
                  "precision": precision, "cpu": cpu_model(), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "python": platform.python_version(), "epochs": len(history),
                  "train_faces": len(train_set), "val_faces": len(val_set), "best_val_acc": best_val_acc,
                  "best_val_acc_tta": _best_row(history).get("val_acc_tta") if history else None,
                  "train_seconds": sum(r["seconds"] for r in history)}
    best_state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    # the deliverable: best-validation weights in float16 (half the size; every page and prediction is made
    # from these, so a copy of the run folder reproduces the report exactly)
    shipped = {k: v.half() if v.is_floating_point() else v for k, v in best_state.items()}
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: torch.save(shipped, tmp))
    provenance["weights_sha256"] = file_sha256(run_dir / WEIGHTS_FILE)
    # the test-time views predictions use, chosen on validation with the shipped float16 weights
    final = load_trained_weights(run_dir / WEIGHTS_FILE, dev)
    by_tta = {mode: accuracy(predict_logits(final, val_set.images, config.input_size, tta=mode, device=dev), val_labels)
              for mode in TTA_MODES}
    provenance["val_acc_by_tta"] = by_tta
    provenance["tta"] = max(("flip", "flip+shift"), key=lambda m: by_tta[m])  # flip wins a tie
    atomic_write(run_dir / "run.json", lambda tmp: tmp.write_text(json.dumps(provenance, indent=2)))
    return run_dir


def _best_row(history: list[dict]) -> dict:
    """The epoch whose weights best.pt holds: the first with the highest validation accuracy."""
    return max(history, key=lambda r: r["val_acc"])


def split_for(dataset: Dataset, config: TrainConfig) -> tuple[FaceSet, FaceSet]:
    """The run's train/validation faces: the seeded stratified split (copies of a face kept on one side unless
    ``config.split`` is "random"), then ``max_train`` if set."""
    if config.split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {config.split!r}")
    groups = None
    if config.split == "grouped":
        groups = cached_duplicates(dataset.train.images, cache_dir=default_cache_dir()).group
    train_set, val_set = train_val_split(dataset.train, config.val_fraction, config.seed, groups=groups)
    if config.max_train and config.max_train < len(train_set):
        train_set = train_set.subset(np.random.default_rng(config.seed).permutation(len(train_set))[:config.max_train])
    return train_set, val_set


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / "run.json").exists()


def cache_key(dataset: Dataset, config: TrainConfig) -> str:
    _, weights_used = resolve_weights(config.weights, warn=False)  # looking a run up is not training: no warning
    return run_key(config, data_fingerprint(dataset.train), weights_used)


def matches_run(run_dir: Path, run_key_expected: str) -> bool:
    """Whether ``run_dir`` holds a finished run with this cache key (e.g. the model shipped with a report)."""
    try:
        meta = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("run_key") == run_key_expected and all((Path(run_dir) / f).is_file() for f in RUN_FILES)


def ensure_run(dataset: Dataset, config: TrainConfig, runs_root: Path, device: str = "auto",
               progress: bool = True, shipped: Path | None = None) -> Path:
    """The run for (config, data): a finished run in the cache, else the ``shipped`` model folder when it was
    trained with the same settings, data and initial weights, else trained (or resumed) into the cache."""
    key = cache_key(dataset, config)
    run_dir = Path(runs_root) / f"{dataset.name}-{key}"
    if is_complete(run_dir):
        return run_dir
    if shipped is not None and matches_run(shipped, key):
        return Path(shipped)
    return train(dataset, config, run_dir, device=device, progress=progress)


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
    model, _ = build_model("random")
    if which == "best" and (run_dir / "best.pt").exists():
        state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    else:
        state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(state)
    return model.to(device).eval(), config


def load_trained_weights(path: Path, device: str | torch.device = "cpu"):
    """The model in eval mode, in float32, from a shipped float16 state dict."""
    model, _ = build_model("random")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval()


def prediction_tta(run_dir: Path) -> str:
    """The test-time views a run's predictions use (chosen on validation; "flip" for runs that predate the choice)."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text()).get("tta", "flip")
    except (OSError, ValueError):
        return "flip"
