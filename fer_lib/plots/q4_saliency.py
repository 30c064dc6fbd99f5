"""Q4's figures: occlusion effects, attribution grid, sanity check, aligned class means. Every text is 8 pt or more
in figures at most 9 inches wide: 10 CSS px or more on a page 900 px wide (plots.show checks it)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

SMALL = 8  # pt: the smallest text of these figures (10.7 CSS px at natural size)
READ = 10  # pt: numbers read off a figure (13.3 CSS px at natural size, 12 px on a page 10% narrower)
DISPLAY_BLUR, DISPLAY_TOP = 1.0, 99  # one face's map shown blurred (px), over this percentile: blobs, not speckle
MAP_CMAP = "inferno"  # perceptual: dark = little attribution, bright yellow = the most
MAP_ALPHA_MAX = 0.85  # a map's opacity where it is highest
MAP_ALPHA_FLOOR = 0.1  # below this share of its maximum a map is fully transparent: the grey face shows through
REGION_COLOURS = {"brows": "#ff7f0e", "eyes": "#17becf", "nose": "#e377c2", "mouth": "#ffd92f",
                  "rest_of_face": "#2ca02c", "outside_face": "#7f7f7f"}


def _map_overlay(saliency_map: np.ndarray) -> np.ndarray:
    """(H, W, 4) the map in the perceptual colour map, more opaque where higher (near 0: the face alone)."""
    rgba = plt.get_cmap(MAP_CMAP)(np.clip(saliency_map, 0, 1))
    rgba[..., 3] = MAP_ALPHA_MAX * np.clip((saliency_map - MAP_ALPHA_FLOOR) / (1 - MAP_ALPHA_FLOOR), 0, 1)
    return rgba


def plot_attribution_grid(faces: np.ndarray, maps: dict[str, np.ndarray], regions: dict[str, np.ndarray],
                          row_titles: list[str]):
    """One row per face: the face with its landmark regions, then every method's map over the grey face."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize, to_rgb
    from scipy.ndimage import gaussian_filter

    names = list(maps)
    tile = 1.2
    fig, axes = plt.subplots(len(faces), len(names) + 1, figsize=(tile * (len(names) + 1) + 1.2,
                                                                   tile * len(faces) + 1.3),
                             squeeze=False, layout="constrained")
    for r, face in enumerate(faces):
        axes[r, 0].imshow(face, cmap="gray", vmin=0, vmax=255)
        colours = np.zeros((*face.shape, 4))  # each region in its colour, the area outside the face left clear
        for name, mask in regions.items():
            colours[mask[r]] = 0 if name == "outside_face" else (*to_rgb(REGION_COLOURS.get(name, "white")), 0.35)
        axes[r, 0].imshow(colours)
        for c, name in enumerate(names, start=1):
            axes[r, c].imshow(face, cmap="gray", vmin=0, vmax=255)
            shown = gaussian_filter(maps[name][r].astype(np.float32), DISPLAY_BLUR)  # the numbers use raw maps
            axes[r, c].imshow(_map_overlay(np.clip(shown / max(np.percentile(shown, DISPLAY_TOP), 1e-12), 0, 1)))
        for c, ax in enumerate(axes[r]):
            ax.set(xticks=[], yticks=[])
            if r == 0:
                ax.set_title((["regions"] + [n.replace(" ", "\n", 1) for n in names])[c], fontsize=SMALL + 1)
        axes[r, 0].set_ylabel(row_titles[r], fontsize=SMALL + 1, rotation=0, ha="right", va="center")
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), MAP_CMAP), ax=axes[:, 1:], shrink=0.6, location="bottom",
                       aspect=30)
    bar.set_label(f"attribution blurred {DISPLAY_BLUR:g} px, share of its {DISPLAY_TOP}th percentile (more opaque "
                  "where higher)", fontsize=SMALL + 1)
    bar.ax.tick_params(labelsize=SMALL)
    return fig


def plot_sanity_check(table, threshold: float = 0.5):
    """Mean Spearman correlation with the trained model's maps (95% interval shaded) as layers are re-initialised
    top-down; ``table`` is indexed (method, step) with columns rho, low, high."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    methods = list(dict.fromkeys(table.index.get_level_values(0)))
    stages = list(dict.fromkeys(table.index.get_level_values(1)))
    x = np.arange(len(stages) + 1)
    for m in methods:
        rows = table.loc[m].loc[stages]
        line, = ax.plot(x, [1.0, *rows["rho"]], "o-", ms=4, label=f"{m} ({int(rows['faces'].iloc[0])} faces)")
        ax.fill_between(x[1:], rows["low"], rows["high"], color=line.get_color(), alpha=0.2, lw=0)
    ax.axhline(threshold, color="grey", ls="--", lw=1)
    ax.set_xticks(x, ["trained"] + [f"down to\n{s}" for s in stages], fontsize=SMALL + 1)
    ax.tick_params(axis="y", labelsize=SMALL + 1)
    ax.set_ylabel("rank correlation with\nthe trained model's maps", fontsize=SMALL + 1)
    ax.set_xlabel("layers re-initialised, from the top (cumulative)", fontsize=SMALL + 1)
    ax.set_ylim(min(-0.2, np.nanmin(table["low"].to_numpy(float)) - 0.05), 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=SMALL, loc="upper right")
    fig.tight_layout()
    return fig


def plot_occlusion_effects(table, classes: list[str], regions: list[str], labels: dict[str, str], top: dict):
    """Heat map, classes x covered regions: the drop in P(true class) when the region is covered minus the drop when
    its control patch is (percentage points, 95% interval in brackets); cells whose interval excludes 0 coloured,
    the others white with grey text; each class's costliest region (``top``: class -> region) in bold."""
    from matplotlib.colors import TwoSlopeNorm

    values, low, high, sign = (table[k].unstack("region").loc[classes, regions].to_numpy(float) * 100
                               for k in ("effect", "low", "high", "sign"))
    clear = sign != 0
    span = max(5.0, float(np.nanmax(np.abs(values))))
    fig, ax = plt.subplots(figsize=(1.25 * len(regions) + 2.1, 0.62 * len(classes) + 1.2), layout="constrained")
    im = ax.imshow(np.where(clear, values, np.nan), cmap="PuOr_r", norm=TwoSlopeNorm(0, -span, span), aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        # one decimal where a bound rounds to 0 but is not 0: "[+0.4, +25]" reads apart from "[-0.4, +25]"
        d = 1 if any(round(x) == 0 and x != 0 for x in (low[i, j], high[i, j])) else 0
        shown = (round(x, d) + 0.0 for x in (v, low[i, j], high[i, j]))
        ax.text(j, i, "{:+.{d}f}\n[{:+.{d}f}, {:+.{d}f}]".format(*shown, d=d) if np.isfinite(v) else "—",
                ha="center", va="center", fontsize=READ,
                color="black" if clear[i, j] else "#4d4d4d",
                fontweight="bold" if top.get(classes[i]) == regions[j] else "normal")
    ax.set_xticks(range(len(regions)), [labels.get(r, r) for r in regions], fontsize=READ)
    ax.set_yticks(range(len(classes)), classes, fontsize=READ)
    ax.xaxis.tick_top()
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    bar.set_label("drop in P(true class) beyond\na same-size patch elsewhere (pp)", fontsize=READ)
    bar.ax.tick_params(labelsize=READ)
    return fig


def plot_aligned_maps(aligned: dict, class_names: list[str]):
    """Two rows, one column per class: the mean landmark-aligned face with the mean saliency map over it (top), and
    the mean map of the trained network minus the randomised network's on the same faces (bottom, red more)."""
    classes, maps = aligned["classes"], aligned["map"]
    excess = maps - aligned["random map"]
    span = float(np.abs(excess).max()) or 1.0
    fig, axes = plt.subplots(2, len(classes), figsize=(1.1 * len(classes) + 1.2, 3.3), squeeze=False,
                             layout="constrained")
    for j, c in enumerate(classes):
        top, bottom = axes[0, j], axes[1, j]
        top.imshow(aligned["face"][j], cmap="gray", vmin=0, vmax=1)
        top.imshow(_map_overlay(maps[j] / maps[j].max()))
        image = bottom.imshow(excess[j], cmap="RdBu_r", vmin=-span, vmax=span)
        for ax in (top, bottom):
            ax.plot(*aligned["shape"].T, ".", color="white" if ax is top else "black", ms=1)
            ax.set(xticks=[], yticks=[], xlim=(-0.5, maps.shape[2] - 0.5), ylim=(maps.shape[1] - 0.5, -0.5))
        top.set_title(f"{class_names[c]}\n{aligned['faces'][j]} faces", fontsize=READ)
    axes[0, 0].set_ylabel("mean map", fontsize=READ)
    axes[1, 0].set_ylabel("minus\nrandomised", fontsize=READ)
    bar = fig.colorbar(image, ax=axes[1, :], shrink=0.9, label="trained minus\nrandomised")
    bar.ax.yaxis.label.set_fontsize(READ)
    bar.ax.tick_params(labelsize=READ)
    return fig
