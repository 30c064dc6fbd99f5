"""Prediction (with optional flip test-time augmentation), accuracy, the confusion matrix and its findings."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import CLASS_NAMES
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


# --------------------------------------------------------------------------------------------- Q3: confusion


@dataclass
class ConfusionFindings:
    counts: np.ndarray  # (7, 7): rows true class, columns predicted
    rates: np.ndarray  # row-normalised: rates[i, j] = share of true class i predicted as j
    report: "object"  # pandas DataFrame: precision, recall, F1, support per class
    accuracy: float
    easiest: list[str]  # classes by recall, best first
    hardest: list[str]  # classes by recall, worst first
    confused_pairs: list[tuple[str, str, float, int]]  # (true, predicted, rate, count), most confused first

    def sentences(self) -> list[str]:
        lines = [f"Validation accuracy {self.accuracy:.1%}.",
                 f"Easiest classes (highest recall): {', '.join(self.easiest[:2])}; hardest: "
                 f"{', '.join(self.hardest[:2])}."]
        pairs = "; ".join(f"{t} -> {p} ({r:.0%} of {t}, {n} faces)" for t, p, r, n in self.confused_pairs[:3])
        lines.append(f"Most confused pairs: {pairs}.")
        return lines

    def seed_claims(self) -> list[tuple[str, bool, str]]:
        """The seed report's claims, each with whether this run reproduces it and the evidence."""
        top2 = set(self.easiest[:2])
        worst = self.hardest[0]
        row = {name: i for i, name in enumerate(CLASS_NAMES)}
        fear = self.rates[row["Fear"]].copy()
        fear[row["Fear"]] = -1
        fear_to = CLASS_NAMES[int(fear.argmax())]
        recall = dict(zip(CLASS_NAMES, np.diag(self.rates)))
        return [
            ("Happy and Surprise are the easiest classes", top2 == {"Happy", "Surprise"},
             f"the two highest recalls are {self.easiest[0]} ({recall[self.easiest[0]]:.0%}) and "
             f"{self.easiest[1]} ({recall[self.easiest[1]]:.0%})"),
            ("Fear is the most misclassified class", worst == "Fear",
             f"lowest recall: {worst} ({recall[worst]:.0%}); Fear's recall is {recall['Fear']:.0%}"),
            ("Fear is most often mistaken for Sad", fear_to == "Sad",
             f"Fear faces are most often predicted as {fear_to} ({self.rates[row['Fear'], row[fear_to]]:.0%})"),
        ]


def confusion_findings(y_true: np.ndarray, y_pred: np.ndarray) -> ConfusionFindings:
    """Confusion matrix, per-class precision/recall/F1 (scikit-learn) and the findings stated in Q3."""
    import pandas as pd
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(CLASS_NAMES)))
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    rates = counts / counts.sum(1, keepdims=True).clip(min=1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    report = pd.DataFrame({"precision": precision, "recall": recall, "F1": f1, "support": support}, index=CLASS_NAMES)
    present = [i for i in labels if support[i] > 0]
    by_recall = sorted(present, key=lambda i: -recall[i])
    pairs = [(CLASS_NAMES[i], CLASS_NAMES[j], float(rates[i, j]), int(counts[i, j]))
             for i in present for j in labels if i != j and counts[i, j] > 0]
    pairs.sort(key=lambda p: (-p[2], -p[3]))
    return ConfusionFindings(counts, rates, report, float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
                             [CLASS_NAMES[i] for i in by_recall], [CLASS_NAMES[i] for i in by_recall[::-1]], pairs)


def misclassified(y_true: np.ndarray, y_pred: np.ndarray, true_name: str, pred_name: str, limit: int = 8) -> np.ndarray:
    """Indices of faces of class ``true_name`` predicted as ``pred_name`` (first ``limit``)."""
    t, p = CLASS_NAMES.index(true_name), CLASS_NAMES.index(pred_name)
    return np.flatnonzero((np.asarray(y_true) == t) & (np.asarray(y_pred) == p))[:limit]


def confident_correct(probs: np.ndarray, labels: np.ndarray, per_class: int = 1,
                      most_confident: bool = True) -> np.ndarray:
    """Indices of correctly classified faces, up to ``per_class`` per class, ordered by class.

    Within a class: the faces the model is surest of first, or (``most_confident=False``) in data order.
    Classes with no correct face are skipped.
    """
    correct = probs.argmax(1) == labels
    chosen = []
    for c in range(probs.shape[1]):
        idx = np.flatnonzero(correct & (labels == c))
        if most_confident:
            idx = idx[np.argsort(-probs[idx, c], kind="stable")]
        chosen.extend(idx[:per_class])
    return np.array(chosen, dtype=np.int64)
