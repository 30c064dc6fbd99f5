"""Q2: the training history, the accuracy figures every page quotes, copies across the split."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------------------------- uncertainty



def _pct_interval(low: float, high: float) -> str:
    return f"95% CI {low:.0%}-{high:.0%}"


# --------------------------------------------------------------------------------------------- one set of numbers

TTA_WORDS = {"none": "no test-time augmentation", "flip": "the face and its mirror image averaged",
             "flip+shift": "the face, its mirror image and four 2-pixel shifts averaged"}


@dataclass
class RunAccuracy:
    """The validation accuracies every page quotes, read once from a finished run's run.json.

    They are measured with the shipped (float16) weights, the ones the pages and the test predictions use.
    """

    plain: float  # no test-time augmentation
    flip: float | None  # the face and its mirror image averaged
    views: str  # the test-time views the predictions use
    with_views: float  # accuracy with those views
    faces: int  # validation faces
    by_views: dict  # every measured variant, {"none": ..., "flip": ..., "flip+shift": ...}

    def sentence(self) -> str:
        text = f"Validation accuracy of the shipped model: {self.plain:.1%} on {self.faces:,} validation faces"
        if self.views != "none":
            text += (f", {self.with_views:.1%} with {TTA_WORDS.get(self.views, self.views)} "
                     "(as the test predictions are made)")
        return text + "."


def run_accuracy(run: dict) -> RunAccuracy | None:
    """:class:`RunAccuracy` from a run.json dict; runs that predate ``val_acc_by_tta`` fall back to their recorded
    best-epoch figures (plain and flip). None when the run records no accuracy."""
    by = run.get("val_acc_by_tta")
    if isinstance(by, dict) and "none" in by:
        views = run.get("tta", "flip")
        return RunAccuracy(float(by["none"]), by.get("flip"), views, float(by.get(views, by["none"])),
                           int(run.get("val_faces", 0)), dict(by))
    if isinstance(run.get("best_val_acc"), float):
        flip = run.get("best_val_acc_tta")
        flip = float(flip) if isinstance(flip, float) else None
        by = {"none": float(run["best_val_acc"]), **({"flip": flip} if flip is not None else {})}
        return RunAccuracy(by["none"], flip, "flip" if flip is not None else "none", flip or by["none"],
                           int(run.get("val_faces", 0)), by)
    return None


# --------------------------------------------------------------------------------------------- Q2: history


@dataclass
class HistoryFindings:
    epochs: int  # epochs in the history
    kept_epoch: int  # the epoch whose weights are shipped (run.json's selected_epoch; older runs: the best one)
    kept_val_acc: float
    best_epoch: int  # first epoch with the highest validation accuracy (plain, no test-time views)
    best_val_acc: float
    kept_val_acc_tta: float | None  # with flip views, where the history records them
    best_val_acc_tta: float | None
    top_tta_epoch: int | None  # the epoch with the highest flip-view accuracy, and that accuracy
    top_tta: float | None
    n_val: int  # validation faces
    val_se: float  # standard error of the kept weights' validation accuracy, sqrt(p(1-p)/n)
    train_column: str  # "train_eval_acc" (eval mode, clean faces: like for like) or "train_acc" (older runs)
    train_faces: int  # training faces behind the training accuracy of train_column (the fixed sample)
    train_acc_at_kept: float
    gap_at_kept: float  # training - validation accuracy of the kept weights
    gap_se: float  # standard error of that difference
    final_train_acc: float
    final_val_acc: float
    final_gap: float
    window: int  # "the last few epochs": how many are compared with the ones before them
    recent_best: float  # best validation accuracy in the last `window` epochs
    earlier_best: float | None  # best validation accuracy before them (None: the run is too short)
    trend: str  # "still improving", "rising as the rate anneals", "levelled off", "declining", "too short to tell"
    lr_peak: float
    lr_window: tuple[float, float]  # learning rate at the first and the last epoch of the window
    train_loss_column: str  # "train_ce" (plain cross-entropy, comparable with val_loss) or "train_loss"
    final_train_loss: float
    final_val_loss: float
    val_loss_falling_at_end: bool
    val_loss_rising_since: int | None  # first epoch after which validation loss only went up, if it did
    val_loss_rise: float  # the last epoch's validation loss over its minimum, minus 1 (0.034: 3.4% above)
    val_loss_min_epoch: int
    raw_at_kept: float | None  # the stepped (not averaged) weights at the kept epoch, when an average is kept
    raw_best: float | None  # the stepped weights' best epoch
    missing: list[str]  # columns this (older) history does not record
    verdict: str  # "overfits", "underfits" or "fits well"

    @property
    def comparable_losses(self) -> bool:
        return self.train_loss_column == "train_ce"

    @property
    def like_for_like(self) -> bool:
        return self.train_column == "train_eval_acc"

    def _train_words(self) -> str:
        if self.like_for_like:
            return (f"training accuracy (a fixed sample of {self.train_faces:,} training faces, scored exactly as "
                    "validation is: no augmentation, dropout off)")
        return "training accuracy (augmented batches, dropout on: this older run records nothing cleaner)"

    def verdict_sentence(self) -> str:
        gap = (f"{self._train_words()} is {abs(self.gap_at_kept) * 100:.1f} points "
               f"{'above' if self.gap_at_kept >= 0 else 'below'} validation accuracy for the kept weights "
               f"({self.train_acc_at_kept:.1%} vs {self.kept_val_acc:.1%}, one standard error "
               f"{self.gap_se * 100:.1f} points)")
        if self.verdict == "overfits":
            harm = []
            if self.val_loss_rising_since:
                harm.append(f"validation loss rises from epoch {self.val_loss_rising_since} on")
            if self.trend == "declining":
                harm.append("validation accuracy fell from its best")
            tail = ("; " + " and ".join(harm)) if harm else (
                "; the best validation accuracy of the last epochs is within one standard error of the earlier "
                f"best and validation loss {self._loss_end_words()}, so the memorised part has not clearly cost "
                "validation accuracy yet")
            return f"The model overfits: {gap}{tail}."
        if self.verdict == "underfits":
            return f"The model underfits: {gap}, and it does not yet fit even the training faces well."
        return f"No strong over- or underfitting: {gap}, and validation loss {self._loss_end_words()}."

    def _loss_end_words(self) -> str:
        if self.val_loss_rise <= 0.001:
            return "ended at its minimum"
        return (f"ended {self.val_loss_rise:.1%} above its minimum (epoch {self.val_loss_min_epoch}), under the 5% "
                "taken as noise")

    def trend_sentence(self) -> str:
        if self.earlier_best is None:
            return (f"With {self.epochs} epoch{'s' if self.epochs != 1 else ''} the run is too short to say "
                    "whether validation accuracy was still improving.")
        if self.window == 1:
            last, before = f"the last epoch ({self.recent_best:.1%})", f"the best before it ({self.earlier_best:.1%})"
        else:
            last = f"the best of the last {self.window} epochs ({self.recent_best:.1%})"
            before = f"the best before them ({self.earlier_best:.1%})"
        diff = (self.recent_best - self.earlier_best) * 100
        noise = f"one standard error ({self.val_se * 100:.1f} points on {self.n_val:,} validation faces)"
        lr = (f"the learning rate went from {self.lr_window[0]:.2g} to {self.lr_window[1]:.2g} "
              f"(its peak: {self.lr_peak:.2g})")
        if self.trend == "rising as the rate anneals":
            return (f"Validation accuracy rose at the end: {last} is {diff:.1f} points above {before}, more than "
                    f"{noise}, but over those epochs {lr}. A schedule that anneals the rate towards zero produces "
                    "such a late rise by design, so it is not evidence that more epochs would help; only a longer "
                    "schedule, measured, can show that.")
        if self.trend == "still improving":
            return (f"Validation accuracy was still improving while the learning rate was high: {last} is {diff:.1f} "
                    f"points above {before}, more than {noise}, and over those epochs {lr}; a longer schedule would "
                    "likely help.")
        if self.trend == "declining":
            return (f"Validation accuracy declined at the end: {last} is {-diff:.1f} points below {before}, "
                    f"more than {noise}.")
        return f"Validation accuracy had levelled off at the end: {last} is within {noise} of {before}."

    def loss_sentence(self) -> str:
        direction = "still falling" if self.val_loss_falling_at_end else "no longer falling"
        if self.comparable_losses:
            return (f"Plain cross-entropy at the last epoch: {self.final_train_loss:.3f} on the training batches "
                    f"(augmented, dropout on) and {self.final_val_loss:.3f} on validation, whose loss is {direction}.")
        return (f"This run's training curve is the optimised label-smoothed loss ({self.final_train_loss:.3f} at "
                "the last epoch), which cannot reach zero and is not comparable in level with validation "
                f"cross-entropy ({self.final_val_loss:.3f}, {direction}).")

    def average_sentence(self) -> str:
        if self.raw_at_kept is None:
            return ""
        return (f"The kept weights are a running average of the weights over the training steps; at epoch "
                f"{self.kept_epoch} the average scores {self.kept_val_acc:.1%} and the weights the optimiser steps "
                f"{self.raw_at_kept:.1%} (their own best: {self.raw_best:.1%}).")

    def kept_sentence(self) -> str:
        if self.kept_epoch == self.best_epoch:
            return (f"The kept weights are those of epoch {self.kept_epoch} of {self.epochs}, the best: "
                    f"{self.kept_val_acc:.1%} validation accuracy.")
        drop = (self.best_val_acc - self.kept_val_acc) * 100
        text = (f"The kept weights are those of epoch {self.kept_epoch} of {self.epochs}, by the rule that ships the "
                f"final average rather than a maximum over noisy epochs (which would flatter it): "
                f"{self.kept_val_acc:.1%} validation accuracy without test-time views, {drop:.1f} points below the "
                f"plain peak of {self.best_val_acc:.1%} at epoch {self.best_epoch}")
        if self.kept_val_acc_tta is None or self.best_val_acc_tta is None:
            return text + "."
        text += (f"; with flip views, as predictions are made, {self.kept_val_acc_tta:.1%} against "
                 f"{self.best_val_acc_tta:.1%} at epoch {self.best_epoch}")
        if self.top_tta_epoch not in (None, self.kept_epoch):
            text += f" (the run's highest flip figure, {self.top_tta:.1%} at epoch {self.top_tta_epoch}, not picked)"
        return text + "."

    def sentences(self) -> list[str]:
        lines = [self.kept_sentence(), self.verdict_sentence(), self.trend_sentence(), self.average_sentence(),
                 self.loss_sentence()]
        if self.missing:
            names = {"train_ce": "plain training cross-entropy",
                     "train_eval_acc": "training accuracy scored like validation",
                     "val_acc_raw": "the stepped weights' validation accuracy"}
            lines.append(f"This run's history (an older format) does not record "
                         f"{' or '.join(names[c] for c in self.missing)}; the figure shows what it does record.")
        return [line for line in lines if line]

    def figure_alt(self, history) -> str:
        """Alt text of the history figure: what each panel shows, with the numbers at its ends."""
        first, last = history.iloc[0], history.iloc[-1]
        lr = history["lr"].to_numpy(dtype=float)
        peak = int(history["epoch"].iloc[int(lr.argmax())])
        return (f"Three panels over {self.epochs} epoch{'s' if self.epochs != 1 else ''}. "
                f"Cross-entropy: training from {first[self.train_loss_column]:.2f} "
                f"to {last[self.train_loss_column]:.2f}, validation from {first['val_loss']:.2f} "
                f"to {last['val_loss']:.2f}. "
                f"Accuracy: training faces scored like validation end at {self.final_train_acc:.1%}, validation at "
                f"{self.final_val_acc:.1%}, kept weights {self.kept_val_acc:.1%} at epoch {self.kept_epoch} "
                "(dashed line)"
                + (f"; the stepped weights' validation accuracy ends at {last['val_acc_raw']:.1%}"
                   if self.raw_at_kept is not None else "")
                + f". Learning rate: from {lr[0]:.2g} up to {lr.max():.2g} at epoch {peak}, then down to {lr[-1]:.2g}.")

    def sentence(self) -> str:
        return " ".join(self.sentences())

    def answer(self) -> str:
        """The short answer to Q2: the verdict, the kept epoch and what the end of the curve shows."""
        kept = (f"The kept weights are from epoch {self.kept_epoch} of {self.epochs}: {self.kept_val_acc:.1%} "
                "validation accuracy")
        kept += f", {self.kept_val_acc_tta:.1%} with flip views." if self.kept_val_acc_tta is not None else "."
        return " ".join([self.verdict_sentence(), kept, self.trend_sentence()])


def _value(row, column: str) -> float | None:
    """A history cell as a float, None where it is absent or NaN (not recorded: NaN is unequal to itself)."""
    value = row.get(column)
    return None if value is None or value != value else float(value)


def _recorded(history, column: str) -> bool:
    return column in history.columns and bool(history[column].notna().all())


def history_findings(history, n_val: int, train_faces: int = 1000, gap_overfit: float = 0.10,
                     underfit_train_acc: float = 0.6, window: int | None = None,
                     anneal_fraction: float = 0.25, kept_epoch: int | None = None) -> HistoryFindings:
    """Findings computed from a history table (pandas DataFrame with the runs.HISTORY_COLUMNS).

    Over- and underfitting compare like with like: ``train_eval_acc`` (the kept weights on a fixed sample of
    ``train_faces`` training faces, eval mode, no augmentation) against validation accuracy, at ``kept_epoch``
    (the shipped weights' epoch, run.json's selected_epoch; default: the first best, as older runs kept);
    older histories fall back to the augmented ``train_acc`` and say so. ``n_val`` sets the noise level: one
    standard error sqrt(p(1-p)/n) of the kept weights' validation accuracy is the tolerance when the best of the last
    ``window`` epochs (default a fifth of the run, at least one) is compared with the best before them. A rise
    over epochs whose learning rate ends below ``anneal_fraction`` of its peak is "rising as the rate anneals":
    the schedule's own doing, not evidence that more epochs would help. Thresholds are rules of thumb.
    """
    epochs = len(history)
    best_i = int(history["val_acc"].to_numpy(dtype=float).argmax())  # the first best epoch
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
    train_column = "train_eval_acc" if _recorded(history, "train_eval_acc") else "train_acc"
    faces = train_faces if train_column == "train_eval_acc" else 0
    p = float(kept["val_acc"])
    se = float(np.sqrt(p * (1 - p) / max(n_val, 1)))
    q = float(kept[train_column])
    gap_se = float(np.sqrt(se ** 2 + q * (1 - q) / max(faces or n_val, 1)))
    gap_kept = q - p
    final_gap = float(last[train_column] - last["val_acc"])

    val_acc = history["val_acc"].to_numpy(dtype=float)
    lr = history["lr"].to_numpy(dtype=float) if "lr" in history else np.ones(epochs)
    window = window or max(1, round(epochs / 5))
    window = min(window, epochs - 1)
    if window >= 1:
        recent, earlier = float(val_acc[-window:].max()), float(val_acc[:-window].max())
        diff = recent - earlier
        annealing = lr[-1] < anneal_fraction * lr.max()
        if diff > se:
            trend = "rising as the rate anneals" if annealing else "still improving"
        else:
            trend = "declining" if diff < -se else "levelled off"
        lr_window = (float(lr[-window]), float(lr[-1]))
    else:
        recent, earlier, trend, window = float(val_acc.max()), None, "too short to tell", 0
        lr_window = (float(lr[-1]), float(lr[-1]))

    val_loss = history["val_loss"].to_numpy(dtype=float)
    rising = None
    low = int(val_loss.argmin())
    if low < len(val_loss) - 2 and val_loss[-1] > val_loss[low] * 1.05:  # 5%: a rule of thumb for noise
        rising = int(history["epoch"].iloc[low]) + 1

    train_loss_column = "train_ce" if _recorded(history, "train_ce") else "train_loss"
    missing = [c for c in ("train_ce", "train_eval_acc", "val_acc_raw") if not _recorded(history, c)]
    raw = _recorded(history, "val_acc_raw") and not np.allclose(history["val_acc_raw"], history["val_acc"])
    if gap_kept > gap_overfit or rising or trend == "declining":
        verdict = "overfits"
    elif q < underfit_train_acc and gap_kept < gap_overfit / 2:
        verdict = "underfits"
    else:
        verdict = "fits well"
    return HistoryFindings(
        epochs=epochs, kept_epoch=int(kept["epoch"]), kept_val_acc=p, best_epoch=int(best["epoch"]),
        best_val_acc=float(best["val_acc"]), kept_val_acc_tta=_value(kept, "val_acc_tta"),
        best_val_acc_tta=_value(best, "val_acc_tta"), top_tta_epoch=top_tta[0], top_tta=top_tta[1],
        n_val=n_val, val_se=se,
        train_column=train_column, train_faces=faces, train_acc_at_kept=q, gap_at_kept=gap_kept, gap_se=gap_se,
        final_train_acc=float(last[train_column]), final_val_acc=float(last["val_acc"]), final_gap=final_gap,
        window=window, recent_best=recent, earlier_best=earlier, trend=trend, lr_peak=float(lr.max()),
        lr_window=lr_window, train_loss_column=train_loss_column, final_train_loss=float(last[train_loss_column]),
        final_val_loss=float(val_loss[-1]), val_loss_falling_at_end=bool(epochs > 1 and val_loss[-1] < val_loss[-2]),
        val_loss_rising_since=rising, val_loss_rise=float(val_loss[-1] / val_loss[low] - 1),
        val_loss_min_epoch=int(history["epoch"].iloc[low]), raw_at_kept=float(kept["val_acc_raw"]) if raw else None,
        raw_best=float(history["val_acc_raw"].max()) if raw else None, missing=missing, verdict=verdict)


HISTORY_LABELS = {"epoch": "epoch", "lr": "learning rate", "train_ce": "training cross-entropy (augmented)",
                  "val_loss": "validation cross-entropy", "train_acc": "training accuracy (augmented)",
                  "train_eval_acc": "training accuracy (like validation)", "val_acc": "validation accuracy",
                  "val_acc_raw": "validation accuracy, stepped weights"}


def history_table(history):
    """The per-epoch table a reader needs, with words for column names (timings and duplicate columns left out)."""
    shown = history[[c for c in HISTORY_LABELS if _recorded(history, c)]]
    return shown.rename(columns=HISTORY_LABELS)


@dataclass
class SplitCopies:
    """How many validation faces have a copy (exact, or exact or near) in the training part, per split."""

    val_faces_random: int
    random_exact: int  # validation faces of the random split with a pixel-identical face in its training part
    random_near: int  # ... with an exact or near copy there
    val_faces_grouped: int
    grouped_exact: int
    grouped_near: int

    def sentence(self, split: str = "grouped") -> str:
        """What the split means for validation; ``split`` is the run's ("grouped" or "random")."""
        share = self.random_near / max(self.val_faces_random, 1)
        text = (f"The training file holds repeated photos: exact copies and near-copies (re-encoded, re-cropped or "
                f"brightened). Under a plain random split of the same seed and size, {self.random_near:,} of its "
                f"{self.val_faces_random:,} validation faces ({share:.1%}) would have a copy in the training part "
                f"({self.random_exact:,} of them pixel-identical), so validation would partly measure recognition of "
                "faces already seen. ")
        if split == "random":
            return text + "This run uses that random split: its validation accuracy is inflated by those faces."
        return text + (f"This run's split keeps all copies of a face on one side: {self.grouped_near:,} of its "
                       f"{self.val_faces_grouped:,} validation faces have a copy in training.")


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


def test_copies_sentence(summary: dict, file_name: str = "test_duplicates.csv") -> str:
    """What the report's list of test faces with a training copy holds (from Duplicates.summary()); no labels."""
    n, exact, near = summary["test_faces"], summary["test_exact_copies"], summary["test_near_copies"]
    listed = exact + near
    return (f"Of the {n:,} test faces, **{listed:,}** ({listed / max(n, 1):.1%}) have a copy in the training file: "
            f"{exact:,} exact and {near:,} near copies. [{file_name}]({file_name}) beside this report lists their "
            "ids and the kind of copy, so that whoever holds the test labels can also score the model on the "
            f"{n - listed:,} test faces it has never seen in any form. The test labels are hidden here, and no "
            "page states a test-set result.")


# --------------------------------------------------------------------------------------------- Q3: confusion


