"""Q2: the training history, the accuracy figures every page quotes, copies across the split."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer_lib.core.stats import Z95, wilson_interval


def _wilson(p: float, n: int) -> tuple[float, float]:
    low, high = wilson_interval(round(p * n), n)
    return float(low), float(high)


# --------------------------------------------------------------------------------------------- one set of numbers


@dataclass
class RunAccuracy:
    """The validation accuracies every page quotes, read once from a finished run's run.json.

    They are measured with the shipped (float16) weights, the ones the pages and the test predictions use.
    """

    plain: float  # no test-time views
    plain_low: float  # its 95% Wilson interval on `faces`
    plain_high: float
    flip: float | None  # the face and its mirror image, predictions averaged
    views: str  # the test-time views the predictions use: "none", "flip" or "flip+shift"
    with_views: float  # accuracy with those views
    with_views_low: float
    with_views_high: float
    faces: int  # validation faces
    by_views: dict  # every measured variant, {"none": ..., "flip": ..., "flip+shift": ...}
    views_picked_on_validation: bool  # `views` is the best of several variants scored on these same faces

    @property
    def views_gain(self) -> float:
        """Accuracy with the views minus plain accuracy (same faces)."""
        return self.with_views - self.plain


def run_accuracy(run: dict) -> RunAccuracy | None:
    """:class:`RunAccuracy` from a run.json dict; runs that predate ``val_acc_by_tta`` fall back to their recorded
    selected-epoch figures (plain and flip). None when the run records no accuracy."""
    by = run.get("val_acc_by_tta")
    faces = int(run.get("val_faces", 0))
    if isinstance(by, dict) and "none" in by:
        by = {mode: float(acc) for mode, acc in by.items()}
        views = run.get("tta", "flip")
        picked = views != "none" and sum(mode != "none" for mode in by) > 1
    elif isinstance(run.get("best_val_acc"), float):
        flip = run.get("best_val_acc_tta")
        by = {"none": float(run["best_val_acc"]), **({"flip": float(flip)} if isinstance(flip, float) else {})}
        views, picked = ("flip" if "flip" in by else "none"), False
    else:
        return None
    with_views = by.get(views, by["none"])
    return RunAccuracy(by["none"], *_wilson(by["none"], faces), by.get("flip"), views, with_views,
                       *_wilson(with_views, faces), faces, by, picked)


# --------------------------------------------------------------------------------------------- Q2: history


@dataclass
class HistoryFindings:
    """What the per-epoch history shows, as numbers and flags (the notebook words them)."""

    epochs: int  # epochs in the history
    kept_epoch: int  # the epoch whose weights are shipped (run.json's selected_epoch; older runs: the best one)
    kept_val_acc: float
    kept_val_low: float  # 95% Wilson interval of kept_val_acc on n_val faces
    kept_val_high: float
    best_epoch: int  # first epoch with the highest validation accuracy (plain, no test-time views)
    best_val_acc: float
    kept_val_acc_tta: float | None  # with flip views, where the history records them
    best_val_acc_tta: float | None
    top_tta_epoch: int | None  # the epoch with the highest flip-view accuracy, and that accuracy
    top_tta: float | None
    n_val: int  # validation faces
    val_se: float  # standard error of the kept weights' validation accuracy, sqrt(p(1-p)/n)
    # -- memorisation: training faces against validation faces, at the kept epoch
    train_column: str  # "train_eval_acc" (eval mode, clean faces: like for like) or "train_acc" (augmented batches)
    train_faces: int  # training faces behind train_column's accuracy (the fixed sample; 0 for augmented batches)
    train_acc_at_kept: float
    gap_at_kept: float  # training - validation accuracy of the kept weights
    gap_se: float  # standard error of that difference
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
    lr_window: tuple[float, float]  # learning rate at the first and the last epoch of the window
    # -- loss
    train_loss_column: str  # "train_eval_loss" (like validation), "train_ce" (augmented batches) or "train_loss"
    final_train_loss: float
    final_val_loss: float
    val_loss_min: float
    val_loss_min_epoch: int
    rise_epochs: int  # length of the final run of epochs whose validation loss rose over the epoch before (0: none)
    rise_from_epoch: int  # the epoch the run starts from (its low point); the last epoch when rise_epochs is 0
    rise_loss_start: float  # validation loss at rise_from_epoch and at the last epoch
    rise_loss_end: float
    rise_acc_start: float  # validation accuracy at rise_from_epoch and at the last epoch
    rise_acc_end: float
    rise_lr_start: float  # learning rate at rise_from_epoch
    # -- averaged weights (an exponential moving average of the stepped weights), where the run keeps one
    raw_at_kept: float | None  # the stepped (not averaged) weights' validation accuracy at the kept epoch
    raw_best: float | None  # the stepped weights' best epoch accuracy
    missing: list[str]  # columns this (older) history does not record
    # -- flags
    memorises: bool  # training faces score more than gap_overfit above validation at the kept epoch
    loss_rising: bool  # validation loss rose for at least min_rise epochs in a row at the end
    rise_while_annealing: bool  # ... while the learning rate fell, from below anneal_fraction of its peak
    costs_accuracy: bool  # validation accuracy fell by more than one standard error (over the rise, or at the end)
    verdict: str  # "overfits", "underfits" or "fits well"

    @property
    def rise_acc_change(self) -> float:
        return self.rise_acc_end - self.rise_acc_start

    @property
    def mild_overfitting(self) -> bool:
        """Overfitting that has not (yet) cost validation accuracy beyond one standard error."""
        return self.verdict == "overfits" and not self.costs_accuracy

    @property
    def comparable_losses(self) -> bool:
        """The training loss is scored as validation's is (no augmentation, dropout off)."""
        return self.train_loss_column == "train_eval_loss"

    @property
    def like_for_like(self) -> bool:
        return self.train_column == "train_eval_acc"

    @property
    def averaged(self) -> bool:
        return self.raw_at_kept is not None


def _value(row, column: str) -> float | None:
    """A history cell as a float, None where it is absent or NaN (not recorded: NaN is unequal to itself)."""
    value = row.get(column)
    return None if value is None or value != value else float(value)


def _recorded(history, column: str) -> bool:
    return column in history.columns and bool(history[column].notna().all())


def rising_run(values: np.ndarray) -> int:
    """How many of the last steps of ``values`` each rose over the one before (0 when the last one did not)."""
    steps = np.diff(np.asarray(values, dtype=float)) > 0
    return len(steps) - int(np.flatnonzero(~steps)[-1]) - 1 if not steps.all() else len(steps)


def history_findings(history, n_val: int, train_faces: int = 1000, gap_overfit: float = 0.10,
                     underfit_train_acc: float = 0.6, window: int | None = None, min_rise: int = 3,
                     anneal_fraction: float = 0.25, kept_epoch: int | None = None) -> HistoryFindings:
    """Findings computed from a history table (pandas DataFrame with the runs.HISTORY_COLUMNS).

    Overfitting shows three ways, each a flag: the kept weights score more than ``gap_overfit`` higher on training
    faces than on validation faces (``train_eval_acc``, a fixed sample of ``train_faces`` training faces scored like
    validation; older histories fall back to the augmented ``train_acc``); validation loss rose in each of the last
    ``min_rise`` epochs or more; validation accuracy declined at the end. It costs accuracy when validation accuracy
    fell by more than one standard error sqrt(p(1-p)/n) over the rise or over the last ``window`` epochs (default a
    fifth of the run). A rise of validation accuracy over epochs whose learning rate ends below ``anneal_fraction``
    of its peak is the schedule's doing ("annealing_rise"), not evidence that more epochs would help. ``kept_epoch``:
    the shipped weights' epoch (run.json's selected_epoch; default: the first best, as older runs kept).
    The thresholds are rules of thumb.
    """
    epochs = len(history)
    val_acc = history["val_acc"].to_numpy(dtype=float)
    val_loss = history["val_loss"].to_numpy(dtype=float)
    epoch_no = history["epoch"].to_numpy(dtype=int)
    lr = history["lr"].to_numpy(dtype=float) if "lr" in history else np.ones(epochs)
    best_i = int(val_acc.argmax())  # the first best epoch
    best, last = history.iloc[best_i], history.iloc[-1]
    kept = best
    if kept_epoch is not None:
        rows = history[history["epoch"] == kept_epoch]
        if rows.empty:
            raise ValueError(f"kept epoch {kept_epoch} is not in the history (epochs 1-{epochs})")
        kept = rows.iloc[0]
    top_tta = (None, None)
    if _recorded(history, "val_acc_tta"):
        top = history.loc[history["val_acc_tta"].astype(float).idxmax()]
        top_tta = (int(top["epoch"]), float(top["val_acc_tta"]))

    # memorisation
    train_column = "train_eval_acc" if _recorded(history, "train_eval_acc") else "train_acc"
    faces = train_faces if train_column == "train_eval_acc" else 0
    p, q = float(kept["val_acc"]), float(kept[train_column])
    se = float(np.sqrt(p * (1 - p) / max(n_val, 1)))
    gap, gap_se = q - p, float(np.sqrt(se ** 2 + q * (1 - q) / max(faces or n_val, 1)))

    # the end of the accuracy curve
    window = min(window or max(1, round(epochs / 5)), epochs - 1)
    annealed = bool(lr[-1] < anneal_fraction * lr.max())
    if window >= 1:
        recent, earlier = float(val_acc[-window:].max()), float(val_acc[:-window].max())
        diff = recent - earlier
        trend = ("annealing_rise" if annealed else "improving") if diff > se else (
            "declining" if diff < -se else "flat")
        lr_window = (float(lr[-window]), float(lr[-1]))
    else:
        recent, earlier, trend, window = float(val_acc.max()), None, "too_short", 0
        lr_window = (float(lr[-1]), float(lr[-1]))

    # the final run of rising validation loss
    rise = rising_run(val_loss)
    start = epochs - 1 - rise
    loss_rising = rise >= min_rise
    rise_while_annealing = bool(loss_rising and lr[start] < anneal_fraction * lr.max()
                                and np.all(np.diff(lr[start:]) <= 0))
    costs_accuracy = bool(trend == "declining" or (loss_rising and val_acc[-1] - val_acc[start] < -se))

    train_loss_column = next(c for c in ("train_eval_loss", "train_ce", "train_loss") if _recorded(history, c))
    missing = [c for c in ("train_eval_loss", "train_ce", "train_eval_acc", "val_acc_raw") if not _recorded(history, c)]
    raw = _recorded(history, "val_acc_raw") and not np.allclose(history["val_acc_raw"], history["val_acc"])
    memorises = gap > gap_overfit
    if memorises or loss_rising or trend == "declining":
        verdict = "overfits"
    elif q < underfit_train_acc and gap < gap_overfit / 2:
        verdict = "underfits"
    else:
        verdict = "fits well"
    low = int(val_loss.argmin())
    return HistoryFindings(
        epochs=epochs, kept_epoch=int(kept["epoch"]), kept_val_acc=p, **dict(zip(
            ("kept_val_low", "kept_val_high"), _wilson(p, n_val))), best_epoch=int(best["epoch"]),
        best_val_acc=float(best["val_acc"]), kept_val_acc_tta=_value(kept, "val_acc_tta"),
        best_val_acc_tta=_value(best, "val_acc_tta"), top_tta_epoch=top_tta[0], top_tta=top_tta[1],
        n_val=n_val, val_se=se, train_column=train_column, train_faces=faces, train_acc_at_kept=q,
        gap_at_kept=gap, gap_se=gap_se, gap_low=gap - Z95 * gap_se, gap_high=gap + Z95 * gap_se,
        final_train_acc=float(last[train_column]), final_val_acc=float(val_acc[-1]),
        window=window, recent_best=recent, earlier_best=earlier, trend=trend, lr_peak=float(lr.max()),
        lr_window=lr_window, train_loss_column=train_loss_column, final_train_loss=float(last[train_loss_column]),
        final_val_loss=float(val_loss[-1]), val_loss_min=float(val_loss[low]), val_loss_min_epoch=int(epoch_no[low]),
        rise_epochs=rise, rise_from_epoch=int(epoch_no[start]), rise_loss_start=float(val_loss[start]),
        rise_loss_end=float(val_loss[-1]), rise_acc_start=float(val_acc[start]), rise_acc_end=float(val_acc[-1]),
        rise_lr_start=float(lr[start]), raw_at_kept=float(kept["val_acc_raw"]) if raw else None,
        raw_best=float(history["val_acc_raw"].max()) if raw else None, missing=missing, memorises=memorises,
        loss_rising=loss_rising, rise_while_annealing=rise_while_annealing, costs_accuracy=costs_accuracy,
        verdict=verdict)


HISTORY_LABELS = {"epoch": "epoch", "lr": "learning rate",
                  "train_eval_loss": "training cross-entropy (like validation)",
                  "train_ce": "training cross-entropy (augmented)", "val_loss": "validation cross-entropy",
                  "train_acc": "training accuracy (augmented)", "train_eval_acc": "training accuracy (like validation)",
                  "val_acc": "validation accuracy", "val_acc_raw": "validation accuracy, stepped weights"}


@dataclass
class KeptOnTrainingSample:
    """The shipped weights on the training faces the history's ``train_eval_*`` columns use, scored as validation
    is: no augmentation, dropout off, plain cross-entropy (for runs whose history predates those columns)."""

    loss: float
    acc: float
    faces: int


def kept_on_training_sample(model, train_faces, seed: int, input_size: int, device) -> KeptOnTrainingSample:
    """:class:`KeptOnTrainingSample` of ``model`` on ``train_faces``' history sample (scored in eval mode)."""
    import torch

    from fer_lib.training.train import train_eval_indices, validate

    idx = train_eval_indices(len(train_faces), seed)
    out = validate(model, train_faces.images[idx], torch.as_tensor(train_faces.labels[idx], dtype=torch.long),
                   input_size, device, flip=False)
    return KeptOnTrainingSample(float(out["loss"]), float(out["acc"]), len(idx))


def history_table(history):
    """The per-epoch table a reader needs, with words for column names (timings and duplicate columns left out)."""
    shown = history[[c for c in HISTORY_LABELS if _recorded(history, c)]]
    return shown.rename(columns=HISTORY_LABELS)


# --------------------------------------------------------------------------------------------- copies across the split


@dataclass
class SplitCopies:
    """How many validation faces have a copy (exact, or exact or near) in the training part, per split."""

    val_faces_random: int
    random_exact: int  # validation faces of the random split with a pixel-identical face in its training part
    random_near: int  # ... with an exact or near copy there
    val_faces_grouped: int
    grouped_exact: int
    grouped_near: int

    @property
    def random_share(self) -> float:
        """Share of the random split's validation faces with a copy (exact or near) in its training part."""
        return self.random_near / max(self.val_faces_random, 1)


def copies_across(train_groups: np.ndarray, val_groups: np.ndarray) -> int:
    """Validation faces whose group id also occurs among the training faces."""
    return int(np.isin(val_groups, np.unique(train_groups)).sum())


def split_copies(faces, exact_group: np.ndarray, group: np.ndarray, val_fraction: float = 0.1,
                 seed: int = 0, cache_dir=None) -> SplitCopies:
    """Copies across the random split and across the grouped split of the same faces (a FaceSet with labels).

    ``exact_group`` / ``group``: one id per face (duplicates.Duplicates), indexed like ``faces``. With
    ``cache_dir`` the splits come from the split cache (the grouped one is the run's own split).
    """
    from fer_lib.data.layouts import train_val_split

    index = np.arange(len(faces))
    indexed = type(faces)(faces.images, faces.labels, index)  # ids = positions, to look the groups up
    out = []
    for groups in (None, group):
        train, val = train_val_split(indexed, val_fraction, seed, groups=groups, cache_dir=cache_dir)
        out += [len(val), copies_across(exact_group[train.ids], exact_group[val.ids]),
                copies_across(group[train.ids], group[val.ids])]
    return SplitCopies(*out)
