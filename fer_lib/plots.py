"""Every figure of the report, one function per figure; computation happens elsewhere, these only draw."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import CLASS_NAMES


def plot_history(history, title: str = "Training history"):
    """Loss and accuracy per epoch, train vs validation, with the best validation epoch marked."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = history["epoch"]
    best = history.loc[history["val_acc"].idxmax()]
    for ax, key, label in ((ax_loss, "loss", "cross-entropy loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, history[f"train_{key}"], "o-", ms=3, label="train (augmented, dropout on)")
        ax.plot(epochs, history[f"val_{key}"], "s-", ms=3, label="validation")
        ax.axvline(best["epoch"], color="grey", ls="--", lw=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_acc.annotate(f"best: {best['val_acc']:.1%}\n(epoch {int(best['epoch'])})", (best["epoch"], best["val_acc"]),
                    textcoords="offset points", xytext=(-60, -40), arrowprops={"arrowstyle": "->"})
    ax_acc.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_face_grid(images: np.ndarray, labels: np.ndarray, per_class: int = 8, title: str = ""):
    """A grid of faces, one row per class present."""
    classes = [c for c in range(len(CLASS_NAMES)) if (labels == c).any()]
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 1.1, len(classes) * 1.2), squeeze=False)
    for row, c in zip(axes, classes):
        idx = np.flatnonzero(labels == c)[:per_class]
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(idx):
                ax.imshow(images[idx[j]], cmap="gray", vmin=0, vmax=255)
        row[0].set_title(CLASS_NAMES[c], fontsize=9, loc="left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
