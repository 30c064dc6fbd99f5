"""Training, read top to bottom: the optimiser, one epoch, evaluation, and the loop with its checkpoint. Each epoch
draws its shuffling, augmentation and dropout from generators seeded with (seed, epoch), so a resumed run repeats
exactly what an uninterrupted one would have done; then the finish step (finish.py) writes what the run knows."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fer_lib import CLASS_NAMES, ConfigError
from fer_lib.core.io import atomic_write, exclusive_lock
from fer_lib.data.layouts import Dataset
from fer_lib.model.inference import accuracy, predict_logits
from fer_lib.model.network import build_model, preprocess
from fer_lib.training import runs
from fer_lib.training.augment import augment, cutmix
from fer_lib.training.finish import finish_run
from fer_lib.training.runs import TrainConfig


def class_weights(labels: np.ndarray, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).clip(min=1)
    w = 1 / np.sqrt(counts)
    return torch.tensor(w / (w * counts).sum() * counts.sum(), dtype=torch.float32)  # mean weight per face = 1


def make_optimizer(model, config: TrainConfig, steps_per_epoch: int):
    # no decay on batch-norm weights and biases
    groups = [{"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    opt = (torch.optim.AdamW(groups, lr=config.lr) if config.optimizer == "adamw"
           else torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True))
    # OneCycleLR needs a few steps per phase; tiny smoke runs simply stop before the schedule ends
    total_steps = max(config.epochs * steps_per_epoch, 8)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps, pct_start=0.25)
    return opt, sched


def train_step(model, optimizer, scheduler, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
               loss_weight: torch.Tensor | None, generator: torch.Generator, device: torch.device,
               precision: str = "fp32") -> tuple[float, float, int]:
    """One optimisation step on a uint8 batch (B, 48, 48); returns (summed loss, summed plain CE, number correct).
    The plain CE and the count are against each face's own label (on CutMix batches, part of the face is another's)."""
    x = augment(preprocess(images, config.input_size), config.augment, generator)
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


def train_one_epoch(model, ema, optimizer, scheduler, images: torch.Tensor, labels: torch.Tensor,
                    config: TrainConfig, loss_weight, epoch: int, device: torch.device, precision: str,
                    progress: bool) -> dict:
    """One pass in an order drawn from (seed, epoch): the epoch's loss, plain cross-entropy and accuracy."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    order = torch.randperm(len(images), generator=generator)
    steps = max(1, len(images) // config.batch_size)  # the last partial batch is dropped
    model.train()
    loss_sum, ce_sum, correct, seen = 0.0, 0.0, 0, 0
    bar = progress_bar(range(steps), f"epoch {epoch + 1}/{config.epochs}", progress)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout, in a forked RNG: the caller's is untouched
        for step in bar:
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            loss, ce, ok = train_step(model, optimizer, scheduler, images[idx], labels[idx], config, loss_weight,
                                      generator, device, precision)
            if ema is not None:
                ema.update_parameters(model)
            loss_sum, ce_sum, correct, seen = loss_sum + loss, ce_sum + ce, correct + ok, seen + len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    return {"train_loss": loss_sum / seen, "train_ce": ce_sum / seen, "train_acc": correct / seen}


def evaluate(model, images: np.ndarray, labels, input_size: int, device, flip: bool = True) -> dict:
    """Loss and accuracy in eval mode on unaugmented faces in float32, plain and (``flip``) with flip views."""
    labels = torch.as_tensor(labels)
    logits = predict_logits(model, images, input_size, device=device)
    out = {"loss": F.cross_entropy(logits, labels).item(), "acc": accuracy(logits, labels), "acc_tta": None}
    if flip:
        mirrored = predict_logits(model, np.ascontiguousarray(images[:, :, ::-1]), input_size, device=device)
        out["acc_tta"] = accuracy((logits + mirrored) / 2, labels)  # = predict_logits(tta="flip"), one pass fewer
    return out


# a run's files, run.json first (from then on the folder is no finished run): starting over removes them
RUN_OUTPUTS = ("run.json", "config.json", "history.csv", "checkpoint.pt", "best.pt", "weights.pt", "faces.npz",
               "calibration.json", "val_logits.npz", "predictions.csv", "test_duplicates.csv", "test_outputs.json")


def train(dataset: Dataset, config: TrainConfig, run_dir: Path, device: str = "auto", resume: bool = True,
          stop_after: int | None = None, progress: bool = True, wait: bool = True) -> Path:
    """Train into ``run_dir`` under its lock (a second process waits, or with ``wait=False`` is refused, then finds
    the run finished), resuming its checkpoint when ``resume``, then finish the run. ``stop_after``: epochs, for
    tests. What can be refused is checked before anything is written: a refused run leaves the folder as it was."""
    run_dir = Path(run_dir)
    record = runs.run_record(dataset, config)
    dev = runs.resolve_device(device)
    precision = runs.resolve_precision(config.precision, dev)
    with exclusive_lock(runs.run_lock(run_dir), f"training into {run_dir}", wait=wait):
        if resume and runs.is_complete(run_dir) and runs.recorded_key(run_dir) == record["run_key"]:
            return run_dir  # finished while we waited (or earlier)
        ckpt_path = run_dir / "checkpoint.pt"
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=True) if resume and ckpt_path.exists() else None
        if ckpt is not None and ckpt["run_key"] != record["run_key"]:
            raise ConfigError(f"{ckpt_path}: checkpoint of another run (other settings, training faces or initial "
                              "weights); use another run folder, or --no-resume to start over")
        torch.set_num_threads(runs.default_threads())
        train_set, val_set = runs.split_for(dataset, config)

        # the initial weights come from the run's seed, without touching the caller's global RNG
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(config.seed)
            model, weights_origin = build_model(config.weights)  # warns when the ImageNet weights are missing
        model.to(dev, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
        optimizer, scheduler = make_optimizer(model, config, max(1, len(train_set) // config.batch_size))
        loss_weight = class_weights(train_set.labels, config.class_weighting)
        loss_weight = None if loss_weight is None else loss_weight.to(dev)
        ema = None  # an exponential moving average of the weights and batch-norm statistics, when asked for
        if config.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        start_epoch, history = 0, []
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            if ema is not None:
                ema.load_state_dict(ckpt["ema"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, history, weights_origin = ckpt["epoch"], ckpt["history"], ckpt["weights_origin"]
            if progress and start_epoch < config.epochs:
                print(f"resuming {run_dir} from its checkpoint at epoch {start_epoch + 1}/{config.epochs} "
                      "(--no-resume starts over)", file=sys.stderr, flush=True)
        else:  # a previous run's files go, run.json first: a new run never sits beside the old one's weights
            for name in RUN_OUTPUTS:
                (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))

        images, labels = torch.from_numpy(train_set.images), torch.from_numpy(train_set.labels)
        sample = runs.train_eval_indices(len(train_set), config.seed)
        for epoch in range(start_epoch, config.epochs):
            if stop_after is not None and epoch >= stop_after:
                return run_dir
            t0, lr = time.perf_counter(), scheduler.get_last_lr()[0]
            row = {"epoch": epoch + 1, **train_one_epoch(model, ema, optimizer, scheduler, images, labels, config,
                                                         loss_weight, epoch, dev, precision, progress)}
            # the shipped weights (the EMA when there is one) on validation and on the training sample; with an
            # EMA the stepped weights are scored without flip views only (about 4 s per 1,000 faces)
            shipped = model if ema is None else ema.module
            raw = evaluate(model, val_set.images, val_set.labels, config.input_size, dev, flip=ema is None)
            val = raw if ema is None else evaluate(shipped, val_set.images, val_set.labels, config.input_size, dev)
            clean = evaluate(shipped, train_set.images[sample], train_set.labels[sample], config.input_size, dev,
                             flip=False)
            row.update(val_loss=val["loss"], val_acc=val["acc"], val_acc_tta=val["acc_tta"], val_acc_raw=raw["acc"],
                       val_acc_raw_tta=raw["acc_tta"], train_eval_acc=clean["acc"], train_eval_loss=clean["loss"],
                       lr=lr, seconds=time.perf_counter() - t0)
            history.append(row)
            # -- checkpoint, atomically: an interrupted write never corrupts the run
            if runs.selected_row(history, averaged=ema is not None) is row:
                atomic_write(run_dir / "best.pt", lambda tmp: torch.save(shipped.state_dict(), tmp))
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                     "weights_origin": weights_origin, "run_key": record["run_key"], "config": asdict(config),
                     **({"ema": ema.state_dict()} if ema is not None else {})}
            atomic_write(run_dir / "checkpoint.pt", lambda tmp: torch.save(state, tmp))
            atomic_write(run_dir / "history.csv",
                         lambda tmp: pd.DataFrame(history, columns=runs.HISTORY_COLUMNS).to_csv(tmp, index=False))
            if progress:
                print(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.3f} "
                      f"(CE {row['train_ce']:.3f}) acc {row['train_acc']:.3f} | val loss {row['val_loss']:.3f} "
                      f"acc {row['val_acc']:.3f} (flip TTA {row['val_acc_tta']:.3f}) | {row['seconds']:.0f}s",
                      flush=True)
        finish_run(run_dir, dataset, config, train_set, val_set, history, dev,
                   {"weights_origin": weights_origin, "weights_used": record["weights_used"], "precision": precision})
    return run_dir


def progress_bar(iterable, desc: str, enabled: bool = True):
    """A tqdm bar on a terminal; nothing elsewhere (a log file would fill with carriage-return frames)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled or not sys.stderr.isatty(), leave=False, mininterval=2)
