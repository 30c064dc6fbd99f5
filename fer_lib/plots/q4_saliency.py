"""Q4's figures: sanity check, regions, attribution grids, curves."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

# The report's pages show figures at most this wide (CSS pixels; report.py's page style caps the content at
# 960 px, less padding). A figure wider than this is scaled down to it, and its text with it.

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


REGION_COLOURS = {"brows": "#ff7f0e", "eyes": "#17becf", "nose": "#e377c2", "mouth": "#ffd92f",
                  "rest_of_face": "#2ca02c", "outside_face": "#7f7f7f"}


def _region_overlay(regions: dict[str, np.ndarray], i: int, alpha: float = 0.35) -> np.ndarray:
    """(H, W, 4) colours of face ``i``'s regions (the area outside the face left clear)."""
    from matplotlib.colors import to_rgb

    first = next(iter(regions.values()))[i]
    out = np.zeros((*first.shape, 4))
    for name, mask in regions.items():
        if name != "outside_face":
            out[mask[i]] = (*to_rgb(REGION_COLOURS.get(name, "white")), alpha)
    return out


def plot_landmark_regions(faces: np.ndarray, regions: dict[str, np.ndarray], points: np.ndarray,
                          titles: list[str], labels: dict[str, str], ncols: int = 7):
    """Faces with their landmarks (red dots) and the regions drawn from them, coloured, with a legend."""
    from matplotlib.patches import Patch

    n = len(faces)
    rows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(rows, ncols, figsize=(ncols * 1.25, rows * 1.45 + 0.5), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(faces[k], cmap="gray", vmin=0, vmax=255)
        ax.imshow(_region_overlay(regions, k))
        ax.plot(points[k, :, 0], points[k, :, 1], ".", color="red", ms=1.5)
        ax.set_xlim(-0.5, faces.shape[-1] - 0.5)
        ax.set_ylim(faces.shape[-2] - 0.5, -0.5)
        ax.set_title(titles[k], fontsize=7.5)
    fig.legend(handles=[Patch(color=REGION_COLOURS[r], label=labels.get(r, r)) for r in regions if r != "outside_face"],
               loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def plot_attribution_grid(faces: np.ndarray, maps: dict[str, np.ndarray], regions: dict[str, np.ndarray],
                          row_titles: list[str]):
    """One row per face: the face with its landmark regions, then every method's map over the face."""
    names = list(maps)
    fig, axes = plt.subplots(len(faces), len(names) + 1, figsize=(1.3 * (len(names) + 1) + 1.0, 1.3 * len(faces) + 0.9),
                             squeeze=False, layout="constrained")
    overlay = None
    for r, face in enumerate(faces):
        axes[r, 0].imshow(face, cmap="gray", vmin=0, vmax=255)
        axes[r, 0].imshow(_region_overlay(regions, r))
        for c, name in enumerate(names, start=1):
            axes[r, c].imshow(face, cmap="gray", vmin=0, vmax=255)
            overlay = axes[r, c].imshow(maps[name][r], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title((["regions"] + names)[c], fontsize=8)
        axes[r, 0].set_ylabel(row_titles[r], fontsize=8, rotation=0, ha="right", va="center")
    if overlay is not None:
        fig.colorbar(overlay, ax=axes[:, 1:], shrink=0.5, location="bottom", label="share of the map's maximum")
    return fig


def plot_region_controls(table, methods: list[str], regions: list[str], labels: dict[str, str], flagged=()):
    """One panel per method: the difference in share of the map's mass per region (percentage points), trained
    minus randomised network, with its 95% interval; filled where the interval excludes 0."""
    fig, axes = plt.subplots(1, len(methods), figsize=(1.75 * len(methods) + 1.4, 3.0), sharey=True, squeeze=False,
                             layout="constrained")
    y = np.arange(len(regions))[::-1]
    for ax, m in zip(axes[0], methods):
        rows = table.loc[m].loc[regions]
        mid, low, high = (rows[c].to_numpy(float) * 100 for c in ("difference", "low", "high"))
        clear = rows["verdict"].to_numpy() != "no clear difference"
        ax.axvline(0, color="grey", lw=0.8)
        ax.errorbar(mid, y, xerr=[mid - low, high - mid], fmt="none", ecolor="black", elinewidth=1, capsize=2)
        ax.scatter(mid[clear], y[clear], color="tab:red", zorder=3, s=18)
        ax.scatter(mid[~clear], y[~clear], facecolor="white", edgecolor="black", zorder=3, s=18)
        ax.set_title(m + ("\n(fails sanity check)" if m in flagged else ""), fontsize=8)
        ax.tick_params(labelsize=7.5)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(y, [labels.get(r, r) for r in regions], fontsize=8)
    fig.supxlabel("trained minus randomised network: share of the map's mass (percentage points)", fontsize=8)
    return fig


def plot_class_excess(table, methods: list[str], regions: list[str], labels: dict[str, str]):
    """One heat map per method, classes x regions: the class's share of the map's mass minus the mean over all
    classes (percentage points); cells whose 95% interval excludes 0 are coloured, the others left white."""
    from matplotlib.colors import TwoSlopeNorm

    classes = list(dict.fromkeys(table.index.get_level_values(0)))
    span = max(1.0, float(np.nanmax(np.abs(table["excess"].to_numpy(float)))) * 100)
    norm = TwoSlopeNorm(0, -span, span)
    fig, axes = plt.subplots(1, len(methods), figsize=(1.7 * len(methods) + 1.9, 0.3 * len(classes) + 2.0),
                             sharey=True, squeeze=False, layout="constrained")
    im = None
    for ax, m in zip(axes[0], methods):
        values = np.array([[table.loc[(c, m, r), "excess"] * 100 for r in regions] for c in classes])
        clear = np.array([[table.loc[(c, m, r), "verdict"] != "no clear difference" for r in regions] for c in classes])
        im = ax.imshow(np.where(clear, values, np.nan), cmap="RdBu_r", norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:+.0f}", ha="center", va="center", fontsize=7.5,
                    color="black" if clear[i, j] else "#999999")
        ax.set_xticks(range(len(regions)), [labels.get(r, r) for r in regions], rotation=90, fontsize=7.5)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_title(m, fontsize=8)
    fig.colorbar(im, ax=axes[0, :], shrink=0.8, label="class minus all classes (pp)")
    return fig


def plot_perturbation_curves(fractions: np.ndarray, curves: dict[str, dict[str, np.ndarray]], methods: list[str]):
    """Two rows (deletion, insertion), one column per method: the mean class probability against the share of
    pixels removed or revealed, in the method's order and in a random order."""
    fig, axes = plt.subplots(2, len(methods), figsize=(1.65 * len(methods) + 0.9, 4.2), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    for row, kind in enumerate(("deletion", "insertion")):
        for ax, m in zip(axes[row], methods):
            ax.plot(fractions * 100, curves[kind]["random"].mean(0), color="grey", ls="--", label="random order")
            ax.plot(fractions * 100, curves[kind][m].mean(0), color="tab:blue", label="attribution order")
            ax.tick_params(labelsize=7.5)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(m, fontsize=8)
        axes[row, 0].set_ylabel(f"{kind}:\nclass probability", fontsize=8)
    axes[0, 0].legend(fontsize=7.5, loc="upper right")
    fig.supxlabel("pixels removed (deletion) or revealed (insertion), % of the face", fontsize=8)
    return fig
