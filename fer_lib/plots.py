"""Every figure of the report, one function per figure; computation happens elsewhere, these only draw."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import (
    MaxNLocator,
    NullLocator,
    PercentFormatter,
    ScalarFormatter,
)

from . import CLASS_NAMES


def _recorded(history, column: str) -> bool:
    return column in history.columns and bool(history[column].notna().all())


def plot_history(history, title: str = "Training history"):
    """Loss and accuracy per epoch, train vs validation, with the best validation epoch marked.

    Both loss curves are plain cross-entropy when the history records ``train_ce`` (the optimised, label-smoothed
    training loss is drawn faint beside it); flip-TTA validation accuracy is drawn when recorded. An older history
    without these columns: what it has is drawn, and the panel says what is missing.
    """
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    epochs = history["epoch"]
    best = history.loc[history["val_acc"].idxmax()]
    if _recorded(history, "train_ce"):
        ax_loss.plot(epochs, history["train_ce"], "o-", ms=3, color="C0",
                     label="train: plain cross-entropy (augmented, dropout on)")
        if _recorded(history, "train_loss"):
            ax_loss.plot(epochs, history["train_loss"], ":", color="C0", alpha=0.5,
                         label="train: the optimised, label-smoothed loss")
    else:
        ax_loss.plot(epochs, history["train_loss"], "o-", ms=3, color="C0",
                     label="train: optimised (label-smoothed) loss")
        ax_loss.set_title("this run did not record plain training cross-entropy:\n"
                          "the two curves use different definitions", fontsize=8, color="C3")
    ax_loss.plot(epochs, history["val_loss"], "s-", ms=3, color="C1", label="validation: plain cross-entropy")
    ax_loss.set_ylabel("loss")
    ax_acc.plot(epochs, history["train_acc"], "o-", ms=3, color="C0", label="train (augmented, dropout on)")
    ax_acc.plot(epochs, history["val_acc"], "s-", ms=3, color="C1", label="validation")
    if _recorded(history, "val_acc_tta"):
        ax_acc.plot(epochs, history["val_acc_tta"], "^--", ms=3, color="C2", alpha=0.8,
                    label="validation, flip test-time augmentation")
    for ax in (ax_loss, ax_acc):
        ax.axvline(best["epoch"], color="grey", ls="--", lw=1)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_acc.set_ylabel("accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax_acc.annotate(f"best: {best['val_acc']:.1%}\n(epoch {int(best['epoch'])})", (best["epoch"], best["val_acc"]),
                    textcoords="offset points", xytext=(-60, -40), arrowprops={"arrowstyle": "->"})
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


def plot_vote_gallery(images: np.ndarray, votes: np.ndarray, titles: list[str], true: str, predicted: str,
                      min_votes: int = 3, ncols: int = 8, title: str = ""):
    """Faces, each above its FER+ vote bars: the 7 classes and one 'other' bar (contempt, unknown, not a face).

    ``votes``: (N, 10) in fer_lib.votes.VOTE_NAMES order. The true class's bar is green, the predicted one red;
    the dashed line marks ``min_votes``.
    """
    n = max(len(images), 1)
    nrows = (n + ncols - 1) // ncols
    # laid out in inches: per column 1.25 wide; per row a caption, a 1-inch face, its bars and their labels
    col_w, face_h, bar_h, caption_h, labels_h, header_h, left = 1.25, 1.0, 0.5, 0.2, 0.35, 0.55, 0.25
    row_h = caption_h + face_h + 0.06 + bar_h + labels_h
    width, height = left + ncols * col_w, header_h + nrows * row_h
    fig = plt.figure(figsize=(width, height))

    def axes_at(x: float, y: float, w: float, h: float):  # inches from the bottom left
        return fig.add_axes((x / width, y / height, w / width, h / height))

    short = [c[:2] for c in CLASS_NAMES] + ["oth"]
    colours = ["0.65"] * len(short)
    colours[CLASS_NAMES.index(true)], colours[CLASS_NAMES.index(predicted)] = "tab:green", "tab:red"
    top = max(int(np.asarray(votes).sum(1).max()) if len(votes) else 10, 1)
    for i in range(len(images)):
        r, c = divmod(i, ncols)
        x = left + c * col_w
        face_bottom = height - header_h - r * row_h - caption_h - face_h
        face = axes_at(x + (col_w - face_h) / 2, face_bottom, face_h, face_h)
        face.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        face.set_title(titles[i], fontsize=7, pad=2)
        face.axis("off")
        bars = axes_at(x + 0.1, face_bottom - 0.06 - bar_h, col_w - 0.2, bar_h)
        v = np.asarray(votes[i])
        bars.bar(range(len(short)), np.r_[v[:len(CLASS_NAMES)], v[len(CLASS_NAMES):].sum()], color=colours)
        bars.axhline(min_votes, color="k", ls="--", lw=0.7)
        bars.set_ylim(0, top)
        bars.set_xticks(range(len(short)), short, fontsize=5, rotation=90)
        bars.set_yticks([0, min_votes, top], [0, min_votes, top] if c == 0 else [], fontsize=5)
        bars.tick_params(length=2, pad=1)
    fig.suptitle((title + "\n" if title else "") + f"FER+ votes: green = true class ({true}), "
                 f"red = predicted ({predicted}), dashed = {min_votes} votes", fontsize=8,
                 y=1 - 0.05 / height, va="top")
    return fig


def plot_recall_vs_frequency(train_share: np.ndarray, recall: np.ndarray, low: np.ndarray, high: np.ndarray,
                             support: np.ndarray):
    """Each class's validation recall (with its 95% interval) against its share of the training faces."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    present = np.asarray(support) > 0
    x, y = np.asarray(train_share) * 100, np.asarray(recall) * 100
    err = np.vstack([y - np.asarray(low) * 100, np.asarray(high) * 100 - y]).clip(min=0)  # rounding at 0% / 100%
    ax.errorbar(x[present], y[present], yerr=err[:, present], fmt="o", capsize=3)
    for i in np.flatnonzero(present):
        ax.annotate(f"{CLASS_NAMES[i]} ({support[i]})", (x[i], y[i]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set_xlabel("share of the training faces (%)")
    ax.set_ylabel("validation recall (%), 95% interval")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title("Recall against training frequency (validation faces per class in brackets)", fontsize=9)
    fig.tight_layout()
    return fig


def _face_extent(face: np.ndarray) -> tuple[float, float, float, float]:
    """imshow extent of a face, so that a map of any resolution drawn with it covers the same square."""
    h, w = face.shape[-2:]
    return (-0.5, w - 0.5, h - 0.5, -0.5)


def plot_attributions(images: np.ndarray, maps: dict[str, np.ndarray], row_titles: list[str],
                      regions: dict[str, np.ndarray] | None = None, outside: dict[str, np.ndarray] | None = None):
    """One row per face: the face (with the region outlines), its first method's map, then every method as an
    overlay, with a colour bar per colour scale; ``outside`` (per method, per face) is printed on each overlay.

    Maps may have another resolution than the faces (input size 72 for 48 px faces): both fill the same tile.
    """
    names = list(maps)
    cols = ["face", f"{names[0]} (map)"] + names
    tile = 2.0
    fig, axes = plt.subplots(len(images), len(cols), figsize=(len(cols) * tile + 1.6, len(images) * tile + 0.5),
                             squeeze=False, layout="constrained")
    raw = overlay = None
    for r, face in enumerate(images):
        extent = _face_extent(face)
        axes[r, 0].imshow(face, cmap="gray", vmin=0, vmax=255, extent=extent)
        if regions:
            for mask in regions.values():
                axes[r, 0].contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=0.7,
                                   extent=(extent[0], extent[1], extent[3], extent[2]), origin="upper")
        raw = axes[r, 1].imshow(maps[names[0]][r], cmap="hot", vmin=0, vmax=1, extent=extent)
        for c, name in enumerate(names, start=2):
            ax = axes[r, c]
            ax.imshow(face, cmap="gray", vmin=0, vmax=255, extent=extent)
            overlay = ax.imshow(maps[name][r], cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent)
            if outside is not None and np.isfinite(outside[name][r]):
                ax.text(0.03, 0.03, f"outside face {outside[name][r]:.0%}", transform=ax.transAxes, fontsize=7,
                        color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "lw": 0})
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=10)
        axes[r, 0].set_ylabel(row_titles[r], fontsize=10, rotation=0, ha="right", va="center")
    if raw is not None:
        fig.colorbar(raw, ax=axes[:, 1], shrink=0.5, location="bottom",
                     label=f"{names[0]} (share of the map's maximum)")
        fig.colorbar(overlay, ax=axes[:, 2:], shrink=0.3, location="bottom",
                     label="attribution (share of the map's maximum)")
    return fig


def plot_region_shares(shares, area: dict[str, float], labels: dict[str, str] | None = None):
    """One heat map per method: rows classes, columns face regions; each cell prints the share of the maps'
    mass in the region and is coloured by that share divided by the region's share of the image."""
    from matplotlib.colors import LogNorm

    labels = labels or {}
    methods = list(dict.fromkeys(shares.index.get_level_values(1)))
    regions = list(shares.columns)
    n_classes = len(set(shares.index.get_level_values(0)))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.0 * len(methods) + 1.2, 0.42 * n_classes + 2.2),
                             squeeze=False, sharey=True, layout="constrained")
    norm = LogNorm(vmin=0.25, vmax=4)
    im = None
    for ax, method in zip(axes[0], methods):
        table = shares.xs(method, level=1)
        ratio = table / np.array([area[r] for r in regions])
        im = ax.imshow(ratio.to_numpy(dtype=float), cmap="RdBu_r", norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(regions)), [f"{labels.get(r, r)}\n({area[r]:.0%})" for r in regions], rotation=90,
                      fontsize=8)
        ax.set_yticks(range(len(table)), table.index)
        ax.set_title(method, fontsize=10)
    bar = fig.colorbar(im, ax=axes[0, :], shrink=0.8, label="share of the mass / share of the image")
    bar.set_ticks([0.25, 0.5, 1, 2, 4], labels=["0.25x", "0.5x", "1x", "2x", "4x"])
    bar.minorticks_off()
    return fig


def plot_method_agreement(matrix):
    """Methods x methods: mean Spearman rank correlation between their maps of the same face."""
    fig, ax = plt.subplots(figsize=(6.2, 5), layout="constrained")
    im = ax.imshow(matrix.to_numpy(dtype=float), cmap="viridis", vmin=-0.2, vmax=1)
    for (i, j), v in np.ndenumerate(matrix.to_numpy(dtype=float)):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9, color="black" if v > 0.6 else "white")
    ax.set_xticks(range(len(matrix)), matrix.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(matrix)), matrix.index)
    fig.colorbar(im, ax=ax, label="mean Spearman rank correlation")
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
    low = np.nanmin(table.to_numpy(dtype=float)) if table.size else 0.0
    ax.set_ylim(min(-0.2, low - 0.05), 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_filter_rows(ascent: np.ndarray, faces: np.ndarray, filter_ids, captions: list[str], tile: float = 0.95):
    """Per filter, one row: its gradient-ascent image, then its top validation faces (strongest first).

    Every thumbnail has the same size (``tile`` inches); the caption sits on its own line above each row.
    """
    n, k = len(filter_ids), faces.shape[1]
    caption = 0.25  # inches above each row
    fig, axes = plt.subplots(n, k + 1, figsize=((k + 1) * tile, n * (tile + caption)), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - caption / (n * (tile + caption)),
                        wspace=0.05, hspace=caption / tile)
    for r, f in enumerate(filter_ids):
        axes[r, 0].imshow(ascent[r], cmap="gray", vmin=0, vmax=1)
        for j in range(k):
            axes[r, j + 1].imshow(faces[r, j], cmap="gray", vmin=0, vmax=255)
        for ax in axes[r]:
            ax.axis("off")
        axes[r, 0].text(0, 1.06, f"filter {f}: {captions[r]}", transform=axes[r, 0].transAxes, fontsize=8,
                        va="bottom")
    return fig


def plot_ascent_grid(ascent: np.ndarray, filter_ids, captions: list[str], flagged=None, ncols: int = 8):
    """Gradient-ascent images, one tile per filter; ``flagged`` tiles (bool per filter) get a red frame and a mark."""
    nrows = max(1, (len(filter_ids) + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.6, nrows * 1.95), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        if i < len(filter_ids):
            ax.imshow(ascent[i], cmap="gray", vmin=0, vmax=1)
            mark = flagged is not None and bool(flagged[i])
            ax.set_title(f"{filter_ids[i]}{' *' if mark else ''}\n{captions[i]}", fontsize=8,
                         color="firebrick" if mark else "black")
            if mark:
                for side in ax.spines.values():
                    side.set_visible(True)
                    side.set_color("firebrick")
                    side.set_linewidth(2)
    fig.tight_layout()
    return fig


def plot_activation_maps(faces: np.ndarray, maps: np.ndarray, captions: list[str], ncols: int = 8):
    """One tile per filter: a face (uint8, 48 px) with the filter's response map (any resolution, in [0, 1])
    over it, and one colour bar."""
    n = len(faces)
    nrows = max(1, (n + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.6 + 1.0, nrows * 1.85), squeeze=False,
                             layout="constrained")
    im = None
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            extent = _face_extent(faces[i])
            ax.imshow(faces[i], cmap="gray", vmin=0, vmax=255, extent=extent)
            im = ax.imshow(maps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=extent)
            ax.set_title(captions[i], fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="share of the map's maximum")
    return fig


def plot_stage_maps(sides_by_input: dict[int, dict[str, int]]):
    """Feature-map side after the stem and each stage, one line per input size (Q1's key figure)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for size, sides in sides_by_input.items():
        stages = list(sides)
        ax.plot(stages, [sides[s] for s in stages], marker="o", label=f"input {size}x{size}")
        for stage in stages:
            ax.annotate(f"{sides[stage]}x{sides[stage]}", (stage, sides[stage]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=8)
    ax.set_yscale("log", base=2)
    ax.set_yticks(sorted({v for sides in sides_by_input.values() for v in sides.values()}))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylabel("feature-map side (pixels)")
    ax.set_title("ResNet18: spatial size of the feature maps per stage")
    ax.legend()
    fig.tight_layout()
    return fig
