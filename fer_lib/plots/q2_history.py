"""Q2's figures: the training history."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator, PercentFormatter

from fer_lib.questions.q2_history import recorded


def plot_history(history, title: str, kept_epoch: int, rise_from_epoch: int | None = None,
                 kept_train_loss: float | None = None):
    """Loss, accuracy and learning rate per epoch, the kept epoch marked, the epochs from ``rise_from_epoch`` on
    (validation loss rising) shaded. Training curves score training faces as validation is (``train_eval_*``), the
    augmented batches dotted; without ``train_eval_loss``, the kept weights' ``kept_train_loss`` is one diamond.
    With averaged weights, ``val_acc_raw`` (the stepped ones) is drawn beside ``val_acc``."""
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(10, 3.9), width_ratios=[1, 1.35, 0.75],
                                                 layout="constrained")
    epochs = history["epoch"]
    kept = history.loc[history["epoch"] == kept_epoch].iloc[0]
    every_epoch = recorded(history, "train_eval_loss")
    if every_epoch:
        ax_loss.plot(epochs, history["train_eval_loss"], "-", color="C0", lw=2, label="training, like validation")
    ax_loss.plot(epochs, history["train_ce"], ":" if every_epoch else "-", color="C0", alpha=0.6,
                 label="training (augmented)")
    ax_loss.plot(epochs, history["val_loss"], "-", color="C1", label="validation")
    if kept_train_loss is not None and not every_epoch:
        ax_loss.plot([kept["epoch"]], [kept_train_loss], "D", color="C0", ms=7, zorder=5,
                     label="training, like validation:\nthis run's one point\n(later runs: every epoch)")
    ax_loss.set_ylabel("cross-entropy")
    if rise_from_epoch is not None and rise_from_epoch < int(epochs.iloc[-1]):
        for ax in (ax_loss, ax_acc):
            ax.axvspan(rise_from_epoch, epochs.iloc[-1], color="C3", alpha=0.12, lw=0,
                       label="validation loss rising" if ax is ax_loss else None)
    ax_acc.plot(epochs, history["train_eval_acc"], "-", color="C0", lw=2,
                label="training faces, scored like validation")
    ax_acc.plot(epochs, history["train_acc"], ":", color="C0", alpha=0.6, label="training batches (augmented)")
    ax_acc.plot(epochs, history["val_acc"], "-", color="C1", lw=2, label="validation (kept, averaged weights)"
                if recorded(history, "val_acc_raw") else "validation")
    if recorded(history, "val_acc_raw"):
        ax_acc.plot(epochs, history["val_acc_raw"], "--", color="C2", label="validation (stepped weights)")
    ax_acc.set(ylabel="accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax_acc.annotate(f"kept {kept['val_acc']:.1%}\nepoch {int(kept['epoch'])}", (kept["epoch"], kept["val_acc"]),
                    textcoords="offset points", xytext=(-62, -38), fontsize=9, arrowprops={"arrowstyle": "->"})
    ax_lr.plot(epochs, history["lr"], "-", color="0.3")
    ax_lr.set(ylabel="learning rate", ylim=(0, None))
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.axvline(kept["epoch"], color="grey", ls="--", lw=1)
        ax.set(xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:  # a one-epoch run: one tick, not a fractional axis
            ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9)
    ax_loss.legend(fontsize=9)
    ax_acc.legend(fontsize=9, loc="lower right")
    fig.suptitle(title, fontsize=11)
    return fig


