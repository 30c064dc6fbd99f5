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

# The report's pages show figures at most this wide (CSS pixels; report.py's page style caps the content at
# 960 px, less padding). A figure wider than this is scaled down to it, and its text with it.
PAGE_WIDTH_PX = 900
MIN_TEXT_PX = 9  # the smallest text a page may show, at PAGE_WIDTH_PX
FIGURE_DPI = 120


def figure_png(fig, dpi: int = FIGURE_DPI) -> bytes:
    """The figure as PNG bytes, cropped to its content (as Jupyter's inline backend does)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def smallest_text_px(fig, png_width_px: int, dpi: int = FIGURE_DPI, page_width_px: int = PAGE_WIDTH_PX):
    """(size in CSS pixels, the text) of the figure's smallest visible text once the PNG is shown on a page.

    The PNG is shown at its natural CSS width (``png_width_px * 96 / dpi``), scaled down to ``page_width_px``
    when wider; a text of ``s`` points is ``s * dpi / 72`` PNG pixels. Returns (inf, "") without text.
    """
    from matplotlib.text import Text

    natural = png_width_px * 96 / dpi
    scale = min(1.0, page_width_px / natural) * natural / png_width_px  # CSS px per PNG px
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
             and (t.axes is None or t.axes.get_visible())]
    if not texts:
        return float("inf"), ""
    smallest = min(texts, key=lambda t: t.get_fontsize())
    return smallest.get_fontsize() * dpi / 72 * scale, smallest.get_text()


def show_figure(fig, alt: str, dpi: int = FIGURE_DPI, min_text_px: float = MIN_TEXT_PX):
    """Display ``fig`` in the notebook as an <img> with ``alt`` text (what the figure shows), then close it.

    The output carries both an HTML <img> (what the rendered page shows, with its alt text) and the plain PNG
    (what the index takes as the page's thumbnail). Raises ValueError when ``alt`` is empty or when the
    figure's smallest text would be under ``min_text_px`` CSS pixels at the page's width: enlarge that text or
    narrow the figure.
    """
    import io

    from PIL import Image

    if not alt or not alt.strip():
        raise ValueError("show_figure needs an alt text that says what the figure shows")
    png = figure_png(fig, dpi)
    width = Image.open(io.BytesIO(png)).size[0]
    size, text = smallest_text_px(fig, width, dpi)
    inches = fig.get_figwidth()
    plt.close(fig)
    if size < min_text_px:
        raise ValueError(f"the text {text[:40]!r} would show at {size:.1f} px on the page (at least {min_text_px} "
                         f"px): enlarge it or narrow the figure ({inches:.1f} inches wide)")
    _display_png(png, round(width * 96 / dpi), alt)


def show_image(image, alt: str, width_px: int = PAGE_WIDTH_PX):
    """Display a PIL image (a photo, an annotated copy) as an <img> with ``alt`` text, at most ``width_px``
    CSS pixels wide; text drawn on it should be sized for that width (photos.annotate does so)."""
    import io

    if not alt or not alt.strip():
        raise ValueError("show_image needs an alt text that says what the image shows")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    _display_png(buffer.getvalue(), min(width_px, image.size[0]), alt)


def _display_png(png: bytes, css_width: int, alt: str) -> None:
    """An <img> for the rendered page (with its alt text) and the plain PNG (the index's thumbnail)."""
    import base64
    import html

    from IPython.display import display

    data = base64.b64encode(png).decode()
    img = (f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt.strip())}" '
           f'style="width:{css_width}px;max-width:100%;height:auto">')
    display({"text/html": img, "image/png": data, "text/plain": alt.strip()}, raw=True,
            metadata={"image/png": {"alt": alt.strip()}})


def _recorded(history, column: str) -> bool:
    return column in history.columns and bool(history[column].notna().all())


def plot_history(history, title: str = "Training history", kept_epoch: int | None = None):
    """Loss, accuracy and learning rate per epoch, with the kept weights' epoch marked (``kept_epoch``; default
    the best validation epoch, as older runs kept).

    Accuracy compares like with like when the history records ``train_eval_acc`` (a fixed sample of training
    faces scored as validation is: eval mode, no augmentation); the augmented training accuracy is drawn faint.
    With an average of the weights, ``val_acc_raw`` (the stepped weights) is drawn beside the average's
    ``val_acc``. Loss curves are plain cross-entropy when ``train_ce`` is recorded. An older history without
    these columns: what it has is drawn, and the panel says what is missing.
    """
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(10, 3.9), width_ratios=[1, 1.35, 0.75],
                                                 layout="constrained")
    epochs = history["epoch"]
    kept = history.loc[history["val_acc"].idxmax()] if kept_epoch is None else (
        history.loc[history["epoch"] == kept_epoch].iloc[0])
    if _recorded(history, "train_ce"):
        ax_loss.plot(epochs, history["train_ce"], "-", color="C0", label="training (augmented)")
    else:
        ax_loss.plot(epochs, history["train_loss"], "-", color="C0", label="training: label-smoothed loss")
        ax_loss.set_title("not comparable in level:\ntraining curve is the smoothed loss", fontsize=9, color="C3")
    ax_loss.plot(epochs, history["val_loss"], "-", color="C1", label="validation")
    ax_loss.set_ylabel("cross-entropy")
    if _recorded(history, "train_eval_acc"):
        ax_acc.plot(epochs, history["train_eval_acc"], "-", color="C0", lw=2,
                    label="training faces, scored like validation")
        ax_acc.plot(epochs, history["train_acc"], ":", color="C0", alpha=0.6, label="training batches (augmented)")
    else:
        ax_acc.plot(epochs, history["train_acc"], "-", color="C0", label="training batches (augmented)")
    ax_acc.plot(epochs, history["val_acc"], "-", color="C1", lw=2, label="validation (kept, averaged weights)"
                if _recorded(history, "val_acc_raw") else "validation")
    if _recorded(history, "val_acc_raw"):
        ax_acc.plot(epochs, history["val_acc_raw"], "--", color="C2", label="validation (stepped weights)")
    ax_acc.set_ylabel("accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax_acc.annotate(f"kept {kept['val_acc']:.1%}\nepoch {int(kept['epoch'])}", (kept["epoch"], kept["val_acc"]),
                    textcoords="offset points", xytext=(-62, -38), fontsize=9, arrowprops={"arrowstyle": "->"})
    ax_lr.plot(epochs, history["lr"], "-", color="0.3")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_ylim(bottom=0)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.axvline(kept["epoch"], color="grey", ls="--", lw=1)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9)
    ax_loss.legend(fontsize=9)
    ax_acc.legend(fontsize=9, loc="lower right")
    fig.suptitle(title, fontsize=11)
    return fig


def plot_confusion(counts: np.ndarray, rates: np.ndarray, title: str = "Confusion matrix (validation)"):
    """Counts and row-normalised rates side by side; rows are the true class."""
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.9), layout="constrained")
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, ax=axes[0], annot_kws={"fontsize": 10},
                xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES)
    sns.heatmap(rates * 100, annot=True, fmt=".0f", cmap="Blues", vmin=0, vmax=100, ax=axes[1],
                annot_kws={"fontsize": 10}, xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
                cbar_kws={"label": "% of the true class"})
    for ax, sub in zip(axes, ("counts", "row-normalised, % (diagonal = recall)")):
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(sub)
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle(title)
    return fig


def plot_reliability(before, after, ece_before: float, ece_after: float, temperature: float):
    """Reliability diagrams before and after temperature scaling: accuracy against mean confidence per bin
    (``before`` / ``after``: evaluate.reliability_bins tables), the diagonal being perfect calibration; the
    bars below count the faces per bin."""
    fig, axes = plt.subplots(2, 2, figsize=(9, 5.6), height_ratios=[3, 1], sharex=True, layout="constrained")
    for col, (table, title) in enumerate(((before, f"before scaling: ECE {ece_before:.1%}"),
                                          (after, f"after, T = {temperature:.2f}: ECE {ece_after:.1%}"))):
        ax, count = axes[0, col], axes[1, col]
        width = (table["high"] - table["low"]).to_numpy()
        centre = ((table["high"] + table["low"]) / 2).to_numpy()
        ax.bar(centre, table["accuracy"], width=width * 0.95, color="C0", alpha=0.75, label="accuracy in the bin")
        ax.plot(table["confidence"], table["accuracy"], "o", color="C1", ms=4, label="at the bin's mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        count.bar(centre, table["faces"], width=width * 0.95, color="0.5")
        count.set_ylabel("faces")
        count.set_xlabel("top probability (confidence)")
        for a in (ax, count):
            a.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[0, 0].legend(fontsize=9, loc="upper left", framealpha=0.95)
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
            ax.set_title(titles[i], fontsize=9)
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
    col_w, face_h, bar_h, caption_h, labels_h, header_h, left = 1.25, 1.0, 0.5, 0.22, 0.4, 0.6, 0.3
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
        face.set_title(titles[i], fontsize=8, pad=2)
        face.axis("off")
        bars = axes_at(x + 0.1, face_bottom - 0.06 - bar_h, col_w - 0.2, bar_h)
        v = np.asarray(votes[i])
        bars.bar(range(len(short)), np.r_[v[:len(CLASS_NAMES)], v[len(CLASS_NAMES):].sum()], color=colours)
        bars.axhline(min_votes, color="k", ls="--", lw=0.7)
        bars.set_ylim(0, top)
        bars.set_xticks(range(len(short)), short, fontsize=7.5, rotation=90)
        bars.set_yticks([0, min_votes, top], [0, min_votes, top] if c == 0 else [], fontsize=7.5)
        bars.tick_params(length=2, pad=1)
    fig.suptitle((title + "\n" if title else "") + f"FER+ votes: green = true class ({true}), "
                 f"red = predicted ({predicted}), dashed = {min_votes} votes", fontsize=9,
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


def plot_stage_maps(sides_by_input: dict[int, dict[str, int]]):
    """Feature-map side after the stem and each stage, one line per input size (Q1's key figure)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for size, sides in sides_by_input.items():
        stages = list(sides)
        ax.plot(stages, [sides[s] for s in stages], marker="o", label=f"input {size}x{size}")
        for stage in stages:
            ax.annotate(f"{sides[stage]}x{sides[stage]}", (stage, sides[stage]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=10)
    ax.set_yscale("log", base=2)
    ax.set_yticks(sorted({v for sides in sides_by_input.values() for v in sides.values()}))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylabel("feature-map side (pixels)")
    ax.set_title("ResNet18: spatial size of the feature maps per stage")
    ax.legend()
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ Q4

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
