"""Q2's figures: the training history."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator, PercentFormatter


def _recorded(history, column: str) -> bool:
    return column in history.columns and bool(history[column].notna().all())


def plot_history(history, title: str = "Training history", kept_epoch: int | None = None,
                 rise_from_epoch: int | None = None, kept_train_loss: float | None = None):
    """Loss, accuracy and learning rate per epoch, with the kept weights' epoch marked (``kept_epoch``; default
    the best validation epoch, as older runs kept) and, from ``rise_from_epoch`` on, the epochs over which
    validation loss kept rising shaded.

    Training curves compare like with like where the history records them: ``train_eval_loss`` and
    ``train_eval_acc`` score a fixed sample of training faces as validation is scored (eval mode, no augmentation);
    the augmented training batches are then drawn dotted. With an average of the weights, ``val_acc_raw`` (the
    stepped weights) is drawn beside the average's ``val_acc``. An older history without these columns: what it
    has is drawn, and the loss panel says when its training curve is the label-smoothed loss; ``kept_train_loss``
    (the kept weights' training loss scored like validation, measured afterwards) is then marked at the kept epoch.
    """
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(10, 3.9), width_ratios=[1, 1.35, 0.75],
                                                 layout="constrained")
    epochs = history["epoch"]
    kept = history.loc[history["val_acc"].idxmax()] if kept_epoch is None else (
        history.loc[history["epoch"] == kept_epoch].iloc[0])
    if _recorded(history, "train_eval_loss"):
        ax_loss.plot(epochs, history["train_eval_loss"], "-", color="C0", lw=2, label="training, like validation")
        if _recorded(history, "train_ce"):
            ax_loss.plot(epochs, history["train_ce"], ":", color="C0", alpha=0.6, label="training (augmented)")
    elif _recorded(history, "train_ce"):
        ax_loss.plot(epochs, history["train_ce"], "-", color="C0", label="training (augmented)")
    else:
        ax_loss.plot(epochs, history["train_loss"], "-", color="C0", label="training: label-smoothed loss")
        ax_loss.set_title("not comparable in level:\ntraining curve is the smoothed loss", fontsize=9, color="C3")
    ax_loss.plot(epochs, history["val_loss"], "-", color="C1", label="validation")
    if kept_train_loss is not None:
        ax_loss.plot([kept["epoch"]], [kept_train_loss], "D", color="C0", ms=7, zorder=5,
                     label="training, like validation\n(kept weights)")
    ax_loss.set_ylabel("cross-entropy")
    if rise_from_epoch is not None and rise_from_epoch < int(epochs.iloc[-1]):
        for ax in (ax_loss, ax_acc):
            ax.axvspan(rise_from_epoch, epochs.iloc[-1], color="C3", alpha=0.12, lw=0,
                       label="validation loss rising" if ax is ax_loss else None)
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
        if len(epochs) == 1:  # a one-epoch run: one tick, not a fractional axis
            ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9)
    ax_loss.legend(fontsize=9)
    ax_acc.legend(fontsize=9, loc="lower right")
    fig.suptitle(title, fontsize=11)
    return fig


