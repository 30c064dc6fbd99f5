"""Prediction (with optional flip test-time augmentation), accuracy, the confusion matrix and its findings."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .model import preprocess


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, input_size: int = 48,
                   batch_size: int = 256, tta: bool = False, device: str | torch.device = "cpu") -> torch.Tensor:
    """Logits (N, 7) for uint8 faces (N, 48, 48); ``tta`` averages with the horizontally flipped face."""
    was_training = model.training
    model.eval()
    images = torch.as_tensor(images)
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start:start + batch_size], input_size).to(device)
            logits = model(x)
            if tta:
                logits = (logits + model(torch.flip(x, dims=[3]))) / 2
            out.append(logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 7)


def accuracy(logits: torch.Tensor, labels: torch.Tensor | np.ndarray) -> float:
    return (logits.argmax(1) == torch.as_tensor(labels)).float().mean().item()


@dataclass
class HistoryFindings:
    best_epoch: int
    best_val_acc: float
    train_acc_at_best: float
    final_gap: float  # train accuracy - validation accuracy at the last epoch
    val_loss_rising_since: int | None  # first epoch after which validation loss only went up, if it did
    verdict: str  # "overfits", "underfits" or "fits well"

    def sentence(self) -> str:
        parts = [f"Best validation accuracy {self.best_val_acc:.1%} at epoch {self.best_epoch} "
                 f"(training accuracy then {self.train_acc_at_best:.1%})."]
        parts.append(f"At the last epoch training accuracy is {abs(self.final_gap):.1%} "
                     f"{'above' if self.final_gap >= 0 else 'below'} validation accuracy.")
        if self.val_loss_rising_since:
            parts.append(f"Validation loss rises from epoch {self.val_loss_rising_since} on while training loss falls.")
        parts.append({"overfits": "The model overfits: it fits the training faces much better than unseen ones.",
                      "underfits": "The model underfits: training accuracy is still low and close to validation "
                                   "accuracy, so more capacity or epochs would help.",
                      "fits well": "The train/validation gap is small: no strong over- or underfitting."}[self.verdict])
        return " ".join(parts)


def history_findings(history, gap_overfit: float = 0.10, underfit_train_acc: float = 0.6) -> HistoryFindings:
    """Findings computed from a history table (pandas DataFrame with the train.HISTORY_COLUMNS).

    Training accuracy is measured on augmented batches with dropout on, so it understates how well the
    model fits the training faces; the gap thresholds are rules of thumb, stated in the report.
    """
    best = history.loc[history["val_acc"].idxmax()]
    last = history.iloc[-1]
    gap = float(last["train_acc"] - last["val_acc"])
    val_loss = history["val_loss"].to_numpy()
    rising = None
    low = int(val_loss.argmin())
    if low < len(val_loss) - 2 and val_loss[-1] > val_loss[low] * 1.05:
        rising = int(history["epoch"].iloc[low]) + 1
    if gap > gap_overfit or rising:
        verdict = "overfits"
    elif last["train_acc"] < underfit_train_acc and gap < gap_overfit / 2:
        verdict = "underfits"
    else:
        verdict = "fits well"
    return HistoryFindings(int(best["epoch"]), float(best["val_acc"]), float(best["train_acc"]), gap, rising, verdict)
