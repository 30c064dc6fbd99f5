"""Training: one flat loop, per-epoch history and atomic checkpoints, exact resume, and train-or-reuse.

Each epoch draws its shuffling, augmentation and dropout randomness from generators seeded with
(seed, epoch), so a resumed run repeats exactly what an uninterrupted one would have done.
The run folder's layout, the configuration and the cache key are in runs.py.
"""
from __future__ import annotations

import csv
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fer_lib import CLASS_NAMES, ConfigError
from fer_lib.core.io import atomic_write, cpu_model, exclusive_lock, file_sha256
from fer_lib.data.face_keys import FaceKeys
from fer_lib.data.layouts import Dataset
from fer_lib.model.calibration import CALIBRATION_FILE
from fer_lib.model.inference import TTA_MODES, accuracy, predict_logits
from fer_lib.model.network import build_model, imagenet_weights_path, preprocess, resolve_weights
from fer_lib.training.augment import augment, cutmix
from fer_lib.training.predict import (
    PREDICTIONS_FILE,
    TEST_DUPLICATES_FILE,
    TEST_OUTPUTS_FILE,
    write_calibration_for,
    write_test_outputs,
)
from fer_lib.training.runs import (
    HISTORY_COLUMNS,
    LATER_SETTINGS,
    WEIGHTS_FILE,
    RunIdentity,
    TrainConfig,
    default_threads,
    is_complete,
    load_trained_weights,
    matches_run,
    resolve_device,
    resolve_precision,
    run_identity,
    run_lock,
    selected_row,
    selection_rule,
    split_for,
)

TRAIN_EVAL_SAMPLE = 1000  # training faces scored each epoch in eval mode without augmentation (like for like)


def train_eval_indices(n_train: int, seed: int) -> np.ndarray:
    """The training faces scored each epoch like validation faces (``train_eval_acc``, ``train_eval_loss``)."""
    return np.random.default_rng(seed).permutation(n_train)[:TRAIN_EVAL_SAMPLE]


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
    """One optimisation step on a uint8 batch (B, 48, 48); returns (summed loss, summed plain CE, number correct).
    The plain CE and the count are against each face's own label (on CutMix batches, part of the face is another's)."""
    x = preprocess(images, config.input_size)  # (B, 3, S, S) normalised
    x = augment(x, config.augment, generator)
    x, pasted_labels, lam = cutmix(x, labels, config.cutmix, generator)
    x = x.to(device)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = labels.to(device)
    # bf16 autocast runs convolutions and matmuls in bfloat16, keeps weights, BN and the loss in float32
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x)
    logits = logits.float()
    loss = F.cross_entropy(logits, y, weight=loss_weight, label_smoothing=config.label_smoothing)
    if lam < 1:  # a CutMix batch: the pasted faces' labels carry the pasted share of the loss
        loss = lam * loss + (1 - lam) * F.cross_entropy(logits, pasted_labels.to(device), weight=loss_weight,
                                                        label_smoothing=config.label_smoothing)
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


def _check_resumable(ckpt: dict, ckpt_path: Path, config: TrainConfig, identity: RunIdentity) -> None:
    """Refuse to resume a checkpoint of other settings, other training faces or other initial weights: resuming
    would silently mix two runs. Checkpoints that predate the last two fields are checked against config.json."""
    recorded_config = {**LATER_SETTINGS, **ckpt["config"]}  # a checkpoint from before a setting existed had it off
    if recorded_config != asdict(config):
        changed = sorted(k for k in recorded_config if recorded_config[k] != asdict(config).get(k))
        raise ConfigError(f"{ckpt_path}: checkpoint of a different configuration (differs in {changed}); "
                          "use another run directory, or --no-resume to start over")
    try:
        recorded = json.loads((ckpt_path.parent / "config.json").read_text())
    except (OSError, ValueError):
        recorded = {}
    for field_name, expected, what in (("data_fingerprint", identity.fingerprint, "other training faces"),
                                       ("weights_used", identity.weights_used, "other initial weights")):
        found = ckpt.get(field_name, recorded.get(field_name))
        if found != expected:
            raise ConfigError(f"{ckpt_path}: checkpoint trained on {what} ({field_name} {str(found)[:19]}, now "
                              f"{expected[:19]}); use another run directory, or --no-resume to start over")


STARTING_OVER = ("config.json", "history.csv", "checkpoint.pt", "best.pt", "run.json", WEIGHTS_FILE, CALIBRATION_FILE,
                 PREDICTIONS_FILE, TEST_DUPLICATES_FILE, TEST_OUTPUTS_FILE)


def _start_over(run_dir: Path, progress: bool) -> None:
    """Remove a previous run's files, so that a new run never sits beside the old one's weights and run.json
    (which would make the folder count as finished, serving the old weights under the new settings)."""
    old = [run_dir / name for name in STARTING_OVER if (run_dir / name).exists()]
    # run.json first: from then on the folder no longer counts as a finished run, whatever else remains
    for path in sorted(old, key=lambda p: p.name != "run.json"):
        path.unlink()
    if old and progress:
        print(f"note: starting over in {run_dir}: removed the previous run's {', '.join(p.name for p in old)}",
              file=sys.stderr)


def train(dataset: Dataset, config: TrainConfig, run_dir: Path, device: str = "auto", resume: bool = True,
          stop_after: int | None = None, progress: bool = True, wait: bool = True,
          identity: RunIdentity | None = None) -> Path:
    """Train (or continue training) into ``run_dir``; returns it. ``stop_after`` ends early (tests).

    The run folder is locked while training: a second process for the same folder waits (or, with
    ``wait=False``, is refused) and then finds the run finished. Everything that can be refused (settings,
    weights file, an incompatible checkpoint) is checked before anything is written, so a refused run leaves
    ``run_dir`` as it was.
    """
    run_dir = Path(run_dir)
    identity = identity or run_identity(dataset, config)  # warns when the ImageNet weights are missing
    with exclusive_lock(run_lock(run_dir), f"training into {run_dir}", wait=wait):
        if resume and is_complete(run_dir) and matches_run(run_dir, identity.key):
            return run_dir  # finished while we waited (or earlier)
        return _train_locked(dataset, config, run_dir, device, resume, stop_after, progress, identity)


def _train_locked(dataset: Dataset, config: TrainConfig, run_dir: Path, device: str, resume: bool,
                  stop_after: int | None, progress: bool, identity: RunIdentity) -> Path:
    dev = resolve_device(device)
    precision = resolve_precision(config.precision, dev)
    if not 0 <= config.cutmix <= 1:
        raise ConfigError(f"cutmix is a probability (0 = off), got {config.cutmix}")
    torch.set_num_threads(default_threads())
    train_set, val_set = split_for(dataset, config)
    ckpt_path = run_dir / "checkpoint.pt"
    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=True)
        _check_resumable(ckpt, ckpt_path, config, identity)

    # the initial head weights come from the run's seed, without touching the caller's global RNG
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model, weights_origin = build_model(identity.weights_path)
    if identity.weights_path is None and config.weights != "random":
        weights_origin = f"random initialisation (ImageNet weights not found at {imagenet_weights_path()})"
    model.to(dev)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(train_set) // config.batch_size)  # the last partial batch is dropped
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch)
    loss_weight = class_weights(train_set.labels, config.class_weighting)
    loss_weight = None if loss_weight is None else loss_weight.to(dev)
    ema = make_ema(model, config.ema_decay)
    start_epoch, history = 0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, history = ckpt["epoch"], ckpt["history"]
        weights_origin = ckpt.get("weights_origin", weights_origin)
        if progress and start_epoch < config.epochs:
            print(f"resuming {run_dir} at epoch {start_epoch + 1}/{config.epochs}")
    else:
        _start_over(run_dir, progress)

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(
        {"config": asdict(config), "data_fingerprint": identity.fingerprint, "dataset": dataset.name,
         "weights_used": identity.weights_used, "run_key": identity.key}, indent=2)))
    images = torch.from_numpy(train_set.images)
    labels = torch.from_numpy(train_set.labels)
    val_labels = torch.from_numpy(val_set.labels)
    train_sample = train_eval_indices(len(train_set), config.seed)
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
        bar = progress_bar(range(steps_per_epoch), f"epoch {epoch + 1}/{config.epochs}", progress)
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
        # -- evaluate: the shipped weights (the EMA when there is one) on validation and on a training sample;
        # with an EMA the stepped weights are scored without TTA only (evaluation costs about 4 s per 1,000 faces)
        shipped_model = model if ema is None else ema.module
        raw = validate(model, val_set.images, val_labels, config.input_size, dev, flip=ema is None)
        val = raw if ema is None else validate(shipped_model, val_set.images, val_labels, config.input_size, dev)
        clean = validate(shipped_model, train_set.images[train_sample], labels[train_sample], config.input_size, dev,
                         flip=False)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_ce": ce_sum / seen,
               "train_acc": correct / seen, "val_loss": val["loss"], "val_acc": val["acc"],
               "val_acc_tta": val["acc_tta"], "val_acc_raw": raw["acc"], "val_acc_raw_tta": raw["acc_tta"],
               "train_eval_acc": clean["acc"], "train_eval_loss": clean["loss"],
               "lr": lr, "seconds": time.perf_counter() - t0}
        history.append(row)
        # -- checkpoint (atomically: an interrupted write never corrupts the run)
        if selected_row(history, averaged=ema is not None) is row:
            atomic_write(run_dir / "best.pt", lambda tmp: torch.save(shipped_model.state_dict(), tmp))
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                 "config": asdict(config), "weights_origin": weights_origin,
                 "data_fingerprint": identity.fingerprint, "weights_used": identity.weights_used}
        if ema is not None:
            state["ema"] = ema.state_dict()
        atomic_write(ckpt_path, lambda tmp: torch.save(state, tmp))
        _write_history(run_dir / "history.csv", history)
        if progress:
            print(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.3f} (CE {row['train_ce']:.3f}) "
                  f"acc {row['train_acc']:.3f} | val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} "
                  f"(flip TTA {row['val_acc_tta']:.3f}) | {row['seconds']:.0f}s", flush=True)
    _finish(run_dir, config, identity, weights_origin, dev, precision, history, dataset, train_set, val_set)
    return run_dir


def _finish(run_dir: Path, config: TrainConfig, identity: RunIdentity, weights_origin: str, dev: torch.device,
            precision: str, history: list[dict], dataset: Dataset, train_set, val_set) -> None:
    """Write the shipped float16 weights, the keys of the faces it trained and validated on (so that any copy of
    the data finds it: data.face_keys), choose the prediction views on validation, calibrate, predict the test
    faces and list those with a training copy (predict.py), and write run.json last."""
    best_state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    averaged = bool(config.ema_decay)
    selected = selected_row(history, averaged)
    # the deliverable: the selected epoch's weights in float16 (half the size; every page and prediction is made
    # from these, so a copy of the run folder reproduces the report exactly)
    shipped = {k: v.half() if v.is_floating_point() else v for k, v in best_state.items()}
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: torch.save(shipped, tmp))
    FaceKeys.of(train_set.images, val_set.images).save(run_dir)
    final = load_trained_weights(run_dir / WEIGHTS_FILE, dev)
    val_logits = {mode: predict_logits(final, val_set.images, config.input_size, tta=mode, device=dev)
                  for mode in TTA_MODES}
    by_tta = {mode: accuracy(logits, val_set.labels) for mode, logits in val_logits.items()}
    tta = max(("flip", "flip+shift"), key=lambda m: by_tta[m])
    write_calibration_for(run_dir, val_set, dev, logits=val_logits[tta], tta=tta)
    if dataset.test is not None:
        write_test_outputs(run_dir, dataset.train, dataset.test, dev, tta=tta)
    provenance = {"weights_origin": weights_origin, "weights_used": identity.weights_used, "device": str(dev),
                  "precision": precision, "cpu": cpu_model(), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "python": platform.python_version(), "epochs": len(history),
                  "train_faces": len(train_set), "val_faces": len(val_set),
                  # "best_" names kept for older readers: the selected epoch's validation accuracy
                  "best_val_acc": selected["val_acc"], "best_val_acc_tta": selected.get("val_acc_tta"),
                  "selected_epoch": selected["epoch"], "selection": selection_rule(averaged),
                  "train_seconds": sum(r["seconds"] for r in history),
                  "weights_sha256": file_sha256(run_dir / WEIGHTS_FILE),
                  # the test-time views predictions use, chosen on validation with the shipped float16 weights
                  "val_acc_by_tta": by_tta, "tta": tta}
    atomic_write(run_dir / "run.json", lambda tmp: tmp.write_text(json.dumps(provenance, indent=2)))


def progress_bar(iterable, desc: str, enabled: bool = True):
    """A tqdm bar on a terminal; nothing elsewhere (a log file would fill with carriage-return frames)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled or not sys.stderr.isatty(), leave=False, mininterval=2)


def find_run(dataset: Dataset, config: TrainConfig, runs_root: Path, shipped: Path | list[Path] | None = None,
             identity: RunIdentity | None = None) -> Path | None:
    """The finished run for (config, data), without training: the cache's, else a ``shipped`` model folder that
    was trained with the same settings, data and initial weights; None when there is none."""
    identity = identity or run_identity(dataset, config, warn=False)
    run_dir = cached_run_dir(dataset, runs_root, identity)
    if is_complete(run_dir):
        return run_dir
    shipped = [] if shipped is None else [shipped] if isinstance(shipped, (str, Path)) else shipped
    return next((Path(d) for d in shipped if matches_run(d, identity.key)), None)


def cached_run_dir(dataset: Dataset, runs_root: Path, identity: RunIdentity) -> Path:
    """Where the run for (config, data) is trained in the cache: ``runs_root/<dataset>-<run key>``."""
    return Path(runs_root) / f"{dataset.name}-{identity.key}"


def ensure_run(dataset: Dataset, config: TrainConfig, runs_root: Path, device: str = "auto",
               progress: bool = True, shipped: Path | list[Path] | None = None, wait: bool = True) -> Path:
    """:func:`find_run`'s run, else trained (or resumed) into the cache."""
    identity = run_identity(dataset, config, warn=False)
    found = find_run(dataset, config, runs_root, shipped, identity)
    if found is not None:
        return found
    if identity.weights_path is None and config.weights != "random":
        resolve_weights(config.weights)  # training: now warn that the ImageNet weights are missing
    return train(dataset, config, cached_run_dir(dataset, runs_root, identity), device=device, progress=progress,
                 wait=wait, identity=identity)
