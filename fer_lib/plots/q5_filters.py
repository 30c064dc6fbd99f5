"""Q5's figures: filters' top faces, class selectivity against shuffled labels, gradient-ascent images, attribute
shifts. Fonts are at least 9 pt: with figures at most 9 inches wide that is 12 CSS px on the page."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

FONT = 9  # points


def plot_top_face_rows(ascent: np.ndarray, faces: np.ndarray, captions: list[str], tile: float = 0.5):
    """Per filter one row: its gradient-ascent image in [0, 1] (framed), then its top faces (uint8), with the
    caption on its own line above the row."""
    n, k = faces.shape[:2]
    caption = 0.24  # inches above each row
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
        axes[r, 0].text(0, 1.08, captions[r], transform=axes[r, 0].transAxes, fontsize=FONT, va="bottom")
    return fig


def plot_selectivity(score: np.ndarray, null: np.ndarray, threshold: float | None = None):
    """Histogram of the filters' class-selectivity scores beside the scores the same filters get under shuffled
    labels (all shuffles pooled, as a density), with an optional dashed line at ``threshold``."""
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    top = float(max(np.max(score), np.max(null)))
    bins = np.linspace(0, top * 1.02 + 1e-9, 40)
    ax.hist(np.ravel(null), bins=bins, density=True, color="0.7", label="shuffled labels")
    ax.hist(score, bins=bins, density=True, histtype="step", linewidth=2, color="tab:blue",
            label="filters (true labels)")
    if threshold is not None:
        ax.axvline(threshold, color="firebrick", linestyle="--", linewidth=1, label="95th percentile, shuffled")
    ax.set_xlabel("class selectivity of the top faces: -log10 P(this many of one class by chance)", fontsize=FONT + 1)
    ax.set_ylabel("share of filters (density)", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT)
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
            ax.set_title(titles[i], fontsize=FONT)
    fig.tight_layout(pad=0.3)
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
    ax.set_yticks(y, attributes, fontsize=FONT + 1)
    ax.invert_yaxis()
    ax.set_xlabel("filters (of all) whose top faces differ from faces of the same class", fontsize=FONT + 1)
    ax.tick_params(axis="x", labelsize=FONT)
    ax.legend(fontsize=FONT, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    fig.tight_layout()
    return fig
