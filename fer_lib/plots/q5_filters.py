"""Q5's figures: where filters look on their top faces, their AUROC against a random network, attribute
shifts (fonts 9 pt or more)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

FONT = 9  # points
DIVERGING = "RdBu_r"  # red: the response falls when the part is blurred; blue: it rises


def _overlay(ax, face, drop, limit: float, vmax: float, cmap: str = DIVERGING) -> object:
    """A gray face with ``drop`` laid over it (diverging map; opaque where it is large, clear where it is 0)."""
    ax.imshow(face, cmap="gray", vmin=0, vmax=vmax)
    alpha = np.clip(np.abs(drop) / limit, 0, 1) * 0.8
    image = ax.imshow(drop, cmap=cmap, vmin=-limit, vmax=limit, alpha=alpha)
    ax.axis("off")
    return image


def plot_part_rows(mean_face: np.ndarray, mean_map: np.ndarray, outlines: np.ndarray, start: np.ndarray,
                   grown: np.ndarray, faces: np.ndarray, maps: np.ndarray, captions: list[str], tile: float = 0.8):
    """Per filter one row under its two-line caption: the average of its top faces aligned on their landmarks, the
    average drop laid over it on its own scale and the parts named outlined (``outlines`` (rows, 48, 48) bool; rows
    without enough landmarks stay blank), its face ``grown`` from ``start`` (change laid over the start: orange
    lighter, purple darker), then its top faces (uint8), each with its own drop per face part laid over it (``maps``
    (rows, k, 48, 48), the response lost when the part is blurred)."""
    reach = max(float(np.percentile(np.abs(change := np.asarray(grown) - np.asarray(start)[None]), 99.5)), 1e-3)
    n, k = faces.shape[:2]
    limit = max(float(np.percentile(np.abs(maps), 99.5)), 1e-3)
    own = max(float(np.nanmax(np.abs(mean_map), initial=0)), 1e-3)  # the averages' scale
    caption, gap, head, foot = 0.42, 0.15, 0.25, 0.8  # inches: captions, gap after the average, titles, colour bar
    width, height = (k + 2) * tile * 1.04 + gap, n * (tile + caption) + head + foot
    fig = plt.figure(figsize=(width, height))
    grid = fig.add_gridspec(n, k + 3, width_ratios=[1, 1, gap / tile] + [1] * k, left=0.005, right=0.995,
                            bottom=foot / height, top=1 - (caption + head) / height, wspace=0.04,
                            hspace=caption / tile)
    for r in range(n):
        axes = [fig.add_subplot(grid[r, j]) for j in (0, 1, *range(3, k + 3))]
        _overlay(axes[1], start, change[r], reach, 1, "PuOr_r")
        if np.isfinite(mean_face[r]).all():
            _overlay(axes[0], mean_face[r], mean_map[r], own, 1)
            if outlines[r].any():
                axes[0].contour(outlines[r].astype(float), levels=[0.5], colors="gold", linewidths=1.2)
        axes[0].axis("off")
        for j in range(k):
            image = _overlay(axes[2 + j], faces[r, j], maps[r, j], limit, 255)
        axes[0].text(0, 1.04, captions[r], transform=axes[0].transAxes, fontsize=FONT, va="bottom")
        if r == 0:
            for ax, title in zip(axes[:3], ("average", "grown", "top faces, strongest first")):
                ax.text(0, 1.04 + (caption + 0.04) / tile, title, transform=ax.transAxes, fontsize=FONT,
                        va="bottom", weight="bold")
    bar = fig.add_axes([0.3, 0.35 * foot / height, 0.4, 0.18 * foot / height])
    fig.colorbar(image, cax=bar, orientation="horizontal")
    bar.tick_params(labelsize=FONT)
    bar.set_xticks([-limit, 0, limit], ["response rises", "0", f"falls by {limit:.1f} SD"])
    bar.set_title("when the face part under the colour is blurred, the filter's response...", fontsize=FONT)
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
