"""Q2: the training history, the accuracy figures every page quotes, copies across the split."""
from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from fer_lib.core.stats import Z95, wilson_interval


@dataclass
class RunAccuracy:
    """The validation accuracies every page quotes, from run.json: measured with the shipped (float16) weights."""

    plain: float  # no test-time views
    plain_low: float  # its 95% Wilson interval on `faces`
    plain_high: float
    views: str  # the test-time views the predictions use: "none", "flip" or "flip+shift"
    with_views: float  # accuracy with those views
    faces: int  # validation faces
    by_views: dict  # every measured variant, {"none": ..., "flip": ..., "flip+shift": ...}
    views_picked_on_validation: bool  # `views` is the best of several variants scored on these same faces


def run_accuracy(run: dict) -> RunAccuracy:
    by = {mode: float(acc) for mode, acc in run["val_acc_by_tta"].items()}
    views, n = run.get("tta", "none"), int(run["val_faces"])
    low, high = wilson_interval(round(by["none"] * n), n)
    return RunAccuracy(by["none"], float(low), float(high), views, by.get(views, by["none"]), n, by,
                       views != "none" and sum(mode != "none" for mode in by) > 1)


@dataclass
class HistoryFindings:
    """What the per-epoch history shows, as numbers and flags (the notebook words them)."""

    epochs: int
    kept_epoch: int  # the epoch whose weights are shipped (run.json's selected_epoch)
    kept_val_acc: float
    kept_val_loss: float
    best_epoch: int  # first epoch with the highest validation accuracy (plain, no test-time views)
    best_val_acc: float
    top_tta_epoch: int | None  # the epoch with the highest flip-view accuracy, and that accuracy
    top_tta: float | None
    n_val: int
    val_se: float  # standard error of the kept weights' validation accuracy, sqrt(p(1-p)/n)
    # -- memorisation: training faces scored like validation (train_eval_acc) against validation, at the kept epoch
    train_faces: int
    train_acc_at_kept: float
    gap_at_kept: float  # training - validation accuracy of the kept weights
    gap_low: float  # its 95% interval (normal approximation)
    gap_high: float
    final_train_acc: float
    final_val_acc: float
    # -- the end of the validation-accuracy curve: best of the last `window` epochs against the best before them
    window: int
    recent_best: float
    earlier_best: float | None  # None: the run is too short
    trend: str  # "improving", "annealing_rise" (a rise the schedule makes), "flat", "declining" or "too_short"
    lr_peak: float
    lr_end: float
    # -- loss
    like_for_like_loss: bool  # the history's training loss is scored as validation's (train_eval_loss)
    final_train_loss: float  # train_eval_loss where recorded, else the augmented batches' train_ce
    final_val_loss: float
    val_loss_min: float
    val_loss_min_epoch: int
    rise_epochs: int  # length of the final run of epochs whose validation loss rose over the epoch before (0: none)
    rise_from_epoch: int  # the epoch the run starts from (its low point); the last epoch when rise_epochs is 0
    rise_acc_start: float
    # -- averaged weights (an exponential moving average of the stepped weights), where the run keeps one
    raw_at_kept: float | None  # the stepped weights' validation accuracy at the kept epoch
    raw_best: float | None
    loss_rising: bool  # validation loss rose for at least min_rise epochs in a row at the end
    costs_accuracy: bool  # validation accuracy fell by more than one standard error (over the rise, or at the end)
    verdict: str  # "overfits", "underfits" or "fits well"

    @property
    def averaged(self) -> bool:
        return self.raw_at_kept is not None


def recorded(history, column: str) -> bool:
    return column in history.columns and bool(history[column].notna().all())


def history_findings(history, n_val: int, train_faces: int, kept_epoch: int, gap_overfit: float = 0.10,
                     underfit_train_acc: float = 0.6, window: int | None = None, min_rise: int = 3,
                     anneal_fraction: float = 0.25) -> HistoryFindings:
    """Findings from a history table (runs.HISTORY_COLUMNS); ``kept_epoch``: run.json's selected_epoch. Overfitting
    shows three ways: the kept weights score over ``gap_overfit`` higher on ``train_faces`` training faces scored like
    validation than on validation; validation loss rose in each of the last ``min_rise`` epochs or more; validation
    accuracy declined over the last ``window`` epochs (default a fifth of the run) by over one standard error. A rise
    while the learning rate ends below ``anneal_fraction`` of its peak is the schedule's ("annealing_rise")."""
    epochs = len(history)
    val_acc, val_loss = history["val_acc"].to_numpy(dtype=float), history["val_loss"].to_numpy(dtype=float)
    epoch_no, lr = history["epoch"].to_numpy(dtype=int), history["lr"].to_numpy(dtype=float)
    rows = history[history["epoch"] == kept_epoch]
    if rows.empty:
        raise ValueError(f"kept epoch {kept_epoch} is not in the history (epochs 1-{epochs})")
    kept, best = rows.iloc[0], history.iloc[int(val_acc.argmax())]
    top_tta = (None, None)
    if recorded(history, "val_acc_tta"):
        top = history.loc[history["val_acc_tta"].astype(float).idxmax()]
        top_tta = (int(top["epoch"]), float(top["val_acc_tta"]))

    p, q = float(kept["val_acc"]), float(kept["train_eval_acc"])
    se = float(np.sqrt(p * (1 - p) / max(n_val, 1)))
    gap, gap_se = q - p, float(np.sqrt(se ** 2 + q * (1 - q) / max(train_faces, 1)))
    window = min(window or max(1, round(epochs / 5)), epochs - 1)
    if window >= 1:
        recent, earlier = float(val_acc[-window:].max()), float(val_acc[:-window].max())
        rising = "annealing_rise" if lr[-1] < anneal_fraction * lr.max() else "improving"
        trend = rising if recent - earlier > se else "declining" if recent - earlier < -se else "flat"
    else:
        recent, earlier, trend, window = float(val_acc.max()), None, "too_short", 0

    falls = np.flatnonzero(np.diff(val_loss) <= 0)  # rise: how many of the last epochs each rose over the one before
    rise = epochs - 1 - (falls[-1] + 1 if len(falls) else 0)
    start = epochs - 1 - rise
    loss_rising = rise >= min_rise
    train_loss = "train_eval_loss" if recorded(history, "train_eval_loss") else "train_ce"
    raw = recorded(history, "val_acc_raw") and not np.allclose(history["val_acc_raw"], history["val_acc"])
    if gap > gap_overfit or loss_rising or trend == "declining":
        verdict = "overfits"
    elif q < underfit_train_acc and gap < gap_overfit / 2:
        verdict = "underfits"
    else:
        verdict = "fits well"
    low = int(val_loss.argmin())
    return HistoryFindings(
        epochs, int(kept["epoch"]), p, float(kept["val_loss"]), int(best["epoch"]), float(best["val_acc"]),
        *top_tta, n_val, se, train_faces, q, gap, gap - Z95 * gap_se, gap + Z95 * gap_se,
        float(history["train_eval_acc"].iloc[-1]), float(val_acc[-1]), window, recent, earlier, trend,
        float(lr.max()), float(lr[-1]), train_loss == "train_eval_loss", float(history[train_loss].iloc[-1]),
        float(val_loss[-1]), float(val_loss[low]), int(epoch_no[low]), rise, int(epoch_no[start]),
        float(val_acc[start]),
        float(kept["val_acc_raw"]) if raw else None, float(history["val_acc_raw"].max()) if raw else None,
        loss_rising, bool(trend == "declining" or (loss_rising and val_acc[-1] - val_acc[start] < -se)), verdict)


HISTORY_LABELS = {"epoch": "epoch", "lr": "learning rate",
                  "train_eval_loss": "training cross-entropy (like validation)",
                  "train_ce": "training cross-entropy (augmented)", "val_loss": "validation cross-entropy",
                  "train_acc": "training accuracy (augmented)", "train_eval_acc": "training accuracy (like validation)",
                  "val_acc": "validation accuracy", "val_acc_raw": "validation accuracy, stepped weights"}


def history_table(history):
    """The per-epoch table a reader needs, with words for column names (timings and duplicate columns left out)."""
    return history[[c for c in HISTORY_LABELS if recorded(history, c)]].rename(columns=HISTORY_LABELS)


@dataclass
class SplitCopies:
    """Validation faces with a copy (exact, or exact or near) in the training part: this run's split against a
    plain random split of the same seed and size; and the test faces with a copy in the training file."""

    val_faces: int
    exact: int  # validation faces of this run's split with a pixel-identical face in its training part
    near: int  # ... with an exact or near copy there
    val_faces_random: int
    random_exact: int
    random_near: int
    test_faces: int  # 0 without a test set
    test_exact: int
    test_near: int  # near copies only (not exact)

    @property
    def random_share(self) -> float:
        return self.random_near / max(self.val_faces_random, 1)


def split_copies(dataset, split, val_fraction: float, seed: int, cache_dir=None) -> SplitCopies:
    """:class:`SplitCopies` of ``split`` (the run's (train, val) FaceSets, ids = training-file rows) against a
    random split of ``dataset.train`` with the same ``val_fraction`` and ``seed``."""
    from fer_lib.data.duplicates import cached_duplicates
    from fer_lib.data.layouts import train_val_split

    faces, test = dataset.train, dataset.test
    dup = cached_duplicates(faces.images, None if test is None else test.images, cache_dir=cache_dir)
    order = np.argsort(faces.ids)  # face ids -> positions in the training file, where the groups are indexed
    random = train_val_split(type(faces)(faces.images, faces.labels, np.arange(len(faces))), val_fraction, seed,
                             cache_dir=cache_dir)  # ids here are already positions
    out = []
    for (train, val), at in ((split, lambda ids: order[np.searchsorted(faces.ids, ids, sorter=order)]),
                             (random, lambda ids: ids)):
        out += [len(val)] + [int(np.isin(g[at(val.ids)], g[at(train.ids)]).sum()) for g in (dup.exact_group, dup.group)]
    s = dup.summary()
    return SplitCopies(*out, s.get("test_faces", 0), s.get("test_exact_copies", 0), s.get("test_near_copies", 0))


@dataclass
class HistoryAnswer:
    """Everything the Q2 page shows."""

    findings: HistoryFindings
    accuracy: RunAccuracy  # the shipped weights' figures, the ones every page quotes
    train_eval: "object"  # the kept weights on training faces scored like validation: run.json's train_eval (acc,
    # loss, faces) as attributes; None where run.json does not record it
    copies: SplitCopies
    history: "object"  # the per-epoch DataFrame (history.csv)
    table: "object"  # history_table(history)


def history_answer(ctx) -> HistoryAnswer:
    """Q2's one call, from a report context: the run's history, accuracies, training score and split copies."""
    from fer_lib.core.io import default_cache_dir
    from fer_lib.training.runs import TRAIN_EVAL_SAMPLE, read_history

    run = json.loads((ctx.run_dir / "run.json").read_text())
    train_eval = SimpleNamespace(**run["train_eval"]) if "train_eval" in run else None
    faces = train_eval.faces if train_eval else min(TRAIN_EVAL_SAMPLE, len(ctx.split[0]))
    history = read_history(ctx.run_dir)
    findings = history_findings(history, len(ctx.val), faces, run["selected_epoch"])
    copies = split_copies(ctx.dataset, ctx.split, ctx.config.val_fraction, ctx.config.seed, default_cache_dir())
    return HistoryAnswer(findings, run_accuracy(run), train_eval, copies, history, history_table(history))
