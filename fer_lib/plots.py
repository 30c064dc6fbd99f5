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


def plot_confusion(counts: np.ndarray, rates: np.ndarray, title: str = "Confusion matrix (validation)"):
    """Counts and row-normalised rates side by side; rows are the true class."""
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.6))
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, ax=axes[0],
                xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES)
    sns.heatmap(rates * 100, annot=True, fmt=".0f", cmap="Blues", vmin=0, vmax=100, ax=axes[1],
                xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES, cbar_kws={"label": "% of the true class"})
    for ax, sub in zip(axes, ("counts", "row-normalised, % (diagonal = recall)")):
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(sub)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_gallery(images: np.ndarray, titles: list[str], ncols: int = 8, title: str = ""):
    """A row-wrapped gallery of faces with a caption each."""
    n = max(len(images), 1)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.25, nrows * 1.45), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
            ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_attributions(images: np.ndarray, maps: dict[str, np.ndarray], row_titles: list[str]):
    """One row per face: the face, its saliency map, the overlay, then every other method as an overlay."""
    names = list(maps)
    cols = ["face", f"{names[0]} map", f"{names[0]} overlay"] + names[1:]
    fig, axes = plt.subplots(len(images), len(cols), figsize=(len(cols) * 1.55, len(images) * 1.6), squeeze=False)
    for r, face in enumerate(images):
        panels = [(None, None), (maps[names[0]][r], "map"), (maps[names[0]][r], "overlay")]
        panels += [(maps[n][r], "overlay") for n in names[1:]]
        for c, (m, kind) in enumerate(panels):
            ax = axes[r, c]
            ax.axis("off")
            if kind == "map":
                ax.imshow(m, cmap="hot", vmin=0, vmax=1)
            else:
                ax.imshow(face, cmap="gray", vmin=0, vmax=255)
                if kind == "overlay":
                    ax.imshow(m, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
        axes[r, 0].text(-4, 24, row_titles[r], fontsize=8, ha="right", va="center")
    fig.tight_layout()
    return fig


def plot_sanity_check(table, threshold: float = 0.5):
    """Mean Spearman correlation with the trained model's maps as layers are re-initialised top-down."""
    fig, ax = plt.subplots(figsize=(8, 4))
    steps = ["trained"] + [f"-> {s}" for s in table.index]
    for method in table.columns:
        ax.plot(steps, [1.0] + table[method].tolist(), "o-", label=method)
    ax.axhline(threshold, color="grey", ls="--", lw=1)
    ax.set_ylabel("Spearman rank correlation\nwith the trained model's maps")
    ax.set_xlabel("layers re-initialised (cumulative, from the top)")
    ax.set_ylim(-0.2, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_filter_rows(ascent: np.ndarray, faces: np.ndarray, filter_ids, captions: list[str]):
    """Per filter, one row: its gradient-ascent image, then its top validation faces (strongest first)."""
    k = faces.shape[1]
    fig, axes = plt.subplots(len(filter_ids), k + 1, figsize=((k + 1) * 0.95, len(filter_ids) * 1.05), squeeze=False)
    for r, f in enumerate(filter_ids):
        axes[r, 0].imshow(ascent[r], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"filter {f}", fontsize=7)
        for j in range(k):
            axes[r, j + 1].imshow(faces[r, j], cmap="gray", vmin=0, vmax=255)
        axes[r, 1].set_title(captions[r], fontsize=7, loc="left")
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout(h_pad=0.3, w_pad=0.1)
    return fig


def plot_ascent_grid(ascent: np.ndarray, filter_ids, captions: list[str], ncols: int = 8):
    nrows = (len(filter_ids) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.3, nrows * 1.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(filter_ids):
            ax.imshow(ascent[i], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{filter_ids[i]}: {captions[i]}", fontsize=7)
    fig.tight_layout()
    return fig


def plot_activation_maps(face: np.ndarray, maps: np.ndarray, filter_ids, ncols: int = 8):
    """The chosen face, then each filter's activation map upsampled onto it."""
    import torch
    import torch.nn.functional as F

    up = F.interpolate(torch.as_tensor(maps)[None], size=face.shape, mode="bilinear", align_corners=False)[0].numpy()
    n = len(filter_ids) + 1
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.3, nrows * 1.45), squeeze=False)
    lim = max(float(np.abs(maps).max()), 1e-6)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        ax.imshow(face, cmap="gray", vmin=0, vmax=255) if i < n else None
        if i == 0:
            ax.set_title("face", fontsize=8)
        elif i < n:
            ax.imshow(up[i - 1], cmap="coolwarm", alpha=0.55, vmin=-lim, vmax=lim)
            ax.set_title(f"filter {filter_ids[i - 1]}", fontsize=7)
    fig.tight_layout()
    return fig
