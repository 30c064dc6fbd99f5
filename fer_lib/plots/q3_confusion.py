"""Q3's figures: confusion matrix, reliability, galleries, recall vs frequency."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import PercentFormatter

from fer_lib import CLASS_NAMES


def plot_confusion(counts: np.ndarray, rates: np.ndarray, title: str = "Confusion matrix (validation)", rows="true"):
    """Counts and row-normalised rates side by side; rows are the ``rows`` class (the true one, or the crowd's)."""
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(9.2, 4.6), layout="constrained")  # beside its answer on the index
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, ax=axes[0], annot_kws={"fontsize": 10},
                xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES)
    sns.heatmap(rates * 100, annot=True, fmt=".0f", cmap="Blues", vmin=0, vmax=100, ax=axes[1],
                annot_kws={"fontsize": 10}, xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
                cbar_kws={"label": f"% of the {rows} class"})
    for ax, sub in zip(axes, ("counts", "row-normalised, % (diagonal = recall)")):
        ax.set(xlabel="predicted", ylabel=rows, title=sub)
        ax.tick_params(axis="y", rotation=0)
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
    fig.suptitle(title)
    return fig


def plot_reliability(before, after, ece_before: float, ece_after: float, temperature: float):
    """Reliability diagrams before and after temperature scaling: accuracy against mean confidence per bin
    (``before`` / ``after``: calibration.reliability_table), the diagonal being perfect calibration; the
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
        ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        count.bar(centre, table["faces"], width=width * 0.95, color="0.5")
        count.set(ylabel="faces", xlabel="top probability (confidence)")
        count.xaxis.set_major_formatter(PercentFormatter(1.0))  # shared with the diagram above
    axes[0, 0].legend(fontsize=9, loc="upper left", framealpha=0.95)
    return fig


def plot_gallery(images: np.ndarray, titles: list[str], ncols: int = 8, title: str = ""):
    """A row-wrapped gallery of faces with a caption each."""
    nrows = max(1, -(-len(images) // ncols))
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


VOTE_LETTERS = {"Angry": "A", "Disgust": "D", "Fear": "F", "Happy": "H", "Sad": "S", "Surprise": "U",
                "Neutral": "N"}  # the vote bars' tick labels


def plot_vote_gallery(images: np.ndarray, votes: np.ndarray, titles: list[str], true: str, predicted: str,
                      min_votes: int = 3, ncols: int = 4, title: str = ""):
    """Faces, each beside its FER+ vote bars (``votes``: (N, 10) in q3_votes.FERPLUS_COLUMNS order): the 7 classes
    and one 'other' bar (contempt, unknown, not a face), the true class's bar green, the predicted one red, a dashed
    line at ``min_votes``. Sized so that every text is at least 10 CSS px on the page."""
    nrows = max(1, -(-len(images) // ncols))
    fig, axes = plt.subplots(nrows, 2 * ncols, figsize=(ncols * 2.3, 0.8 + nrows * 1.5), squeeze=False,
                             layout="constrained")
    short = [VOTE_LETTERS[c] for c in CLASS_NAMES] + ["O"]  # one letter each, spelled out in the title
    colours = ["0.65"] * len(short)
    colours[CLASS_NAMES.index(true)], colours[CLASS_NAMES.index(predicted)] = "tab:green", "tab:red"
    top = max(int(np.asarray(votes).sum(1).max()) if len(votes) else 10, 1)
    for i, (face, bars) in enumerate(zip(axes.ravel()[::2], axes.ravel()[1::2])):
        if i >= len(images):
            fig.delaxes(face), fig.delaxes(bars)
            continue
        face.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        face.set_title(titles[i], fontsize=9, pad=2)
        face.axis("off")
        v = np.asarray(votes[i])
        bars.bar(range(len(short)), np.r_[v[:len(CLASS_NAMES)], v[len(CLASS_NAMES):].sum()], color=colours)
        bars.axhline(min_votes, color="k", ls="--", lw=0.7)
        bars.set_ylim(0, top)
        bars.set_xticks(range(len(short)), short, fontsize=9)
        bars.set_yticks([0, min_votes, top], [0, min_votes, top], fontsize=9)
        bars.tick_params(length=2, pad=1)
    fig.suptitle((title + "\n" if title else "") + f"FER+ votes: green = true class ({true}), "
                 f"red = predicted ({predicted}), dashed = {min_votes} votes\n"
                 + ", ".join(f"{VOTE_LETTERS[c]} {c}" for c in CLASS_NAMES)
                 + ", O other (contempt, unknown, not a face)", fontsize=10)
    return fig


def plot_recall_vs_frequency(findings):
    """Each class's validation recall (with its 95% interval) against its share of the training faces
    (``findings``: a q3_confusion.ConfusionFindings with ``train_share``)."""
    r, present = findings.report, findings.support > 0
    x, y = findings.train_share * 100, r["recall"].to_numpy() * 100
    err = np.vstack([y - r["recall_low"] * 100, r["recall_high"] * 100 - y]).clip(min=0)  # rounding at 0% / 100%
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    ax.errorbar(x[present], y[present], yerr=err[:, present], fmt="o", capsize=3)
    for i in np.flatnonzero(present):
        ax.annotate(f"{CLASS_NAMES[i]} ({findings.support[i]})", (x[i], y[i]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set(xlabel="share of the training faces (%)", ylabel="validation recall (%), 95% interval", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.set_title("Recall against training frequency (validation faces per class in brackets)", fontsize=9)
    return fig



def plot_feature_map(xy: np.ndarray, labels: np.ndarray, highlight=("Sad", "Neutral", "Fear"), title: str = ""):
    """A 2-D map (t-SNE) of the faces, a dot each coloured by class: left every class, right only ``highlight``."""
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 5.2), layout="constrained")
    colours = dict(zip(CLASS_NAMES, ("#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#111111")))
    for ax, shown in zip(axes, (CLASS_NAMES, highlight)):
        ax.scatter(*xy[~np.isin(labels, [CLASS_NAMES.index(c) for c in shown])].T, s=5, c="0.85", lw=0)
        for c in shown:
            ax.scatter(*xy[labels == CLASS_NAMES.index(c)].T, s=5, lw=0, c=colours[c], label=c)
        ax.set(xticks=[], yticks=[], title="every class" if shown is CLASS_NAMES else ", ".join(shown) + " only")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(CLASS_NAMES), fontsize=10,
               markerscale=3, handletextpad=0.1, frameon=False)
    fig.suptitle(title)
    return fig
