"""Q5's figures: grown faces, the filters' AUROC against a random network, attribute shifts (fonts 9 pt or more)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

FONT = 9  # points
DIVERGING = "RdBu_r"  # change of a grown face: blue darker, red lighter, white unchanged


def plot_grown_rows(start: np.ndarray, grown: np.ndarray, faces: np.ndarray, captions: list[str],
                    tile: float = 0.62):
    """Per filter one row: the start face, the grown face (both in [0, 1]), their difference (diverging map, one
    symmetric scale for all rows, with a colour bar), then its top faces (uint8); each row's caption above it."""
    n, k = faces.shape[:2]
    diff = np.asarray(grown, dtype=float) - np.asarray(start, dtype=float)[None]
    limit = max(float(np.percentile(np.abs(diff), 99.5)), 1e-3)
    caption, gap = 0.26, 0.12  # inches: caption above each row, gap between the difference and the top faces
    cols = 3 + k
    width = cols * tile * 1.04 + gap
    fig = plt.figure(figsize=(width, n * (tile + caption) + 0.75))
    bottom = 0.75 / (n * (tile + caption) + 0.75)
    grid = fig.add_gridspec(n, cols + 1, width_ratios=[1, 1, 1, gap / tile] + [1] * k, left=0.005, right=0.995,
                            bottom=bottom, top=1 - caption / (n * (tile + caption) + 0.75), wspace=0.04,
                            hspace=caption / tile)
    for r in range(n):
        axes = [fig.add_subplot(grid[r, j]) for j in (0, 1, 2, *range(4, cols + 1))]
        axes[0].imshow(start, cmap="gray", vmin=0, vmax=1)
        axes[1].imshow(grown[r], cmap="gray", vmin=0, vmax=1)
        image = axes[2].imshow(diff[r], cmap=DIVERGING, vmin=-limit, vmax=limit)
        for j in range(k):
            axes[3 + j].imshow(faces[r, j], cmap="gray", vmin=0, vmax=255)
        for ax in axes:
            ax.axis("off")
        axes[0].text(0, 1.06, captions[r], transform=axes[0].transAxes, fontsize=FONT, va="bottom")
        if r == 0:
            for ax, title in zip(axes[:4], ("start", "grown", "difference", "top faces, strongest first")):
                ax.set_title(title, fontsize=FONT, pad=16, loc="left")
    bar = fig.add_axes([0.005, 0.25 * bottom, 3 * tile * 1.04 / width, 0.25 * bottom])
    fig.colorbar(image, cax=bar, orientation="horizontal")
    bar.tick_params(labelsize=FONT)
    bar.set_xticks([-limit, 0, limit], ["darker", "0", "lighter"])
    return fig


def plot_auroc(best: np.ndarray, random_best: np.ndarray, tuned: np.ndarray, threshold: float):
    """Each filter's AUROC for its preferred class (x) against the random network's same filter for that class
    (y); tuned filters in colour, the diagonal dashed, ``threshold`` (the untrained filters' 95th percentile)
    dotted."""
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    tuned = np.asarray(tuned, bool)
    ax.scatter(best[~tuned], random_best[~tuned], s=10, color="0.6", label="not beyond the random network")
    ax.scatter(best[tuned], random_best[tuned], s=10, color="tab:blue", label="tuned (beyond both, FDR 5%)")
    lo = float(min(np.min(best), np.min(random_best), 0.5)) - 0.02
    ax.plot([lo, 1], [lo, 1], "--", color="black", linewidth=1)
    ax.axvline(threshold, linestyle=":", color="tab:red", linewidth=1.5,
               label=f"95% of untrained filters stay below ({threshold:.2f})")
    ax.set_xlim(lo, 1)
    ax.set_ylim(lo, 1)
    ax.set_xlabel("AUROC, trained filter, its preferred class", fontsize=FONT + 1)
    ax.set_ylabel("AUROC, random network, same filter and class", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT, loc="upper left")
    fig.tight_layout()
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
