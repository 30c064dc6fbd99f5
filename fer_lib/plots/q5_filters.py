"""Q5's figures: selectivity, filter images and top faces, attribute shifts."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

# The report's pages show figures at most this wide (CSS pixels; report.py's page style caps the content at
# 960 px, less padding). A figure wider than this is scaled down to it, and its text with it.

def plot_selectivity(score: np.ndarray, null: np.ndarray, threshold: float | None = None):
    """Histogram of the filters' class-selectivity scores beside the scores the same filters get under shuffled
    labels (all shuffles pooled, as a density), with an optional line at a threshold (Q5)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    top = float(max(np.max(score), np.max(null)))
    bins = np.linspace(0, top * 1.02 + 1e-9, 40)
    ax.hist(np.ravel(null), bins=bins, density=True, color="0.7", label="shuffled labels")
    ax.hist(score, bins=bins, density=True, histtype="step", linewidth=2, color="tab:blue",
            label="filters (true labels)")
    if threshold is not None:
        ax.axvline(threshold, color="firebrick", linestyle="--", linewidth=1, label="95th percentile, shuffled")
    ax.set_xlabel("class selectivity of the top faces: -log10 P(this many of one class by chance)", fontsize=9)
    ax.set_ylabel("share of filters (density)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_image_tiles(images: np.ndarray, titles: list[str], ncols: int = 8, tile: float = 1.1):
    """Images in [0, 1] (e.g. gradient-ascent images, contrast-stretched), one tile each with a title."""
    nrows = max(1, (len(images) + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * tile, nrows * (tile + 0.45)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig


def plot_top_face_rows(ascent: np.ndarray, faces: np.ndarray, captions: list[str], tile: float = 0.5):
    """Per filter one row: its gradient-ascent image in [0, 1] (framed), then its top faces (uint8), with the
    caption on its own line above the row."""
    n, k = faces.shape[:2]
    caption = 0.22  # inches above each row
    fig, axes = plt.subplots(n, k + 1, figsize=((k + 1) * tile * 1.04, n * (tile + caption)), squeeze=False)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=1 - caption / (n * (tile + caption)),
                        wspace=0.04, hspace=caption / tile)
    for r in range(n):
        axes[r, 0].imshow(ascent[r], cmap="gray", vmin=0, vmax=1)
        for j in range(k):
            axes[r, j + 1].imshow(faces[r, j], cmap="gray", vmin=0, vmax=255)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
        for side in axes[r, 0].spines.values():
            side.set_visible(True)
            side.set_color("tab:blue")
            side.set_linewidth(1.5)
        axes[r, 0].text(0, 1.08, captions[r], transform=axes[r, 0].transAxes, fontsize=8, va="bottom")
    return fig


def plot_attribute_counts(table):
    """Per attribute, how many filters have top faces higher / lower than faces of the same class (bars), and
    the 95% upper bound of that count under within-class shuffles (black ticks): Q5's ``AttributeShift.table()``."""
    attributes = list(dict.fromkeys(table["attribute"]))
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    y = np.arange(len(attributes))
    for offset, side, colour in ((-0.2, "higher", "tab:orange"), (0.2, "lower", "tab:blue")):
        rows = table[table["top faces"] == side].set_index("attribute").loc[attributes]
        ax.barh(y + offset, rows["filters"], height=0.38, color=colour, label=f"top faces {side}")
        ax.scatter(rows["by chance (95% up to)"], y + offset, marker="|", s=160, color="black", zorder=3,
                   label="chance, 95% upper bound" if side == "higher" else None)
    ax.set_yticks(y, attributes, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("filters (of all) whose top faces differ from faces of the same class", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_attribute_shift(shift: np.ndarray, p: np.ndarray, filter_ids, attribute_labels: list[str],
                         row_labels: list[str] | None = None, alpha: float = 0.05):
    """Heatmap: per filter shown (rows) and attribute (columns), how far its top faces sit from faces of the same
    class, in within-class standard deviations; cells beyond chance (p <= alpha) carry the number in bold."""
    n = len(filter_ids)
    fig, ax = plt.subplots(figsize=(6.8, 0.32 * n + 1.4))
    bound = max(0.5, float(np.nanmax(np.abs(shift))))
    im = ax.imshow(shift, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    for i in range(n):
        for j in range(shift.shape[1]):
            strong = p[i, j] <= alpha
            dark = abs(shift[i, j]) > 0.6 * bound  # white text on the darkest cells
            ax.text(j, i, f"{shift[i, j]:+.1f}", ha="center", va="center", fontsize=8,
                    fontweight="bold" if strong else "normal",
                    color=("white" if dark else "black") if strong else ("0.85" if dark else "0.45"))
    ax.set_xticks(range(len(attribute_labels)), attribute_labels, fontsize=8)
    ax.set_yticks(range(n), row_labels or [str(f) for f in filter_ids], fontsize=8)
    ax.xaxis.tick_top()
    fig.colorbar(im, ax=ax, label="top faces vs same-class faces (SD)", shrink=0.8)
    fig.tight_layout()
    return fig


