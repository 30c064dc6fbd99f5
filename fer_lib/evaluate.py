"""Q2 and Q3 findings as data (history verdicts, the confusion matrix, calibration, copies across the split), the
statistics they rest on, the accuracy figures every page quotes, and the appendix's recipe table."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from . import CLASS_NAMES

# --------------------------------------------------------------------------------------------- uncertainty

Z95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(k, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval (lower, upper) of a proportion k/n; arrays broadcast. n = 0 gives (0, 1).

    Unlike p +- z*sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at k = 0 or k = n.
    """
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    safe_n = np.where(n > 0, n, 1.0)
    p = k / safe_n
    denom = 1 + z ** 2 / safe_n
    centre = (p + z ** 2 / (2 * safe_n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / safe_n + z ** 2 / (4 * safe_n ** 2))
    low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    return np.where(n > 0, low, 0.0), np.where(n > 0, high, 1.0)


def proportions_tie(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> bool:
    """Whether two proportions from independent samples (e.g. the recalls of two classes) are within noise:
    their difference is within z standard errors of the difference (normal approximation)."""
    if n1 == 0 or n2 == 0:
        return True
    p1, p2 = k1 / n1, k2 / n2
    se = np.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return bool(abs(p1 - p2) <= z * se)


def counts_tie(k1: int, k2: int, z: float = Z95) -> bool:
    """Whether two counts from the same faces (two confusions of one true class) are within noise.

    Among the k1 + k2 faces that went to either class, equal rates mean each went to the first with probability
    1/2; the counts tie when the Wilson interval of k1 / (k1 + k2) contains 1/2.
    """
    if k1 + k2 == 0:
        return True
    low, high = wilson_interval(k1, k1 + k2, z)
    return bool(low <= 0.5 <= high)


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
    from .data import train_val_split

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


@dataclass
class ClaimCheck:
    """One claim of the seed report checked against this run."""

    claim: str
    holds: bool  # whether the claim is true as stated (the verdict adds whether that is within noise)
    verdict: str  # e.g. "reproduced", "reproduced, as a near-tie", "not reproduced"
    evidence: str

    def __iter__(self):  # unpacks as (claim, holds, evidence)
        return iter((self.claim, self.holds, self.evidence))


@dataclass
class ConfusionFindings:
    counts: np.ndarray  # (7, 7): rows true class, columns predicted
    rates: np.ndarray  # row-normalised: rates[i, j] = share of true class i predicted as j
    report: "object"  # pandas DataFrame: precision, recall (with its 95% Wilson interval), F1, support per class
    accuracy: float
    easiest: list[str]  # classes by recall, best first
    hardest: list[str]  # classes by recall, worst first
    confused_pairs: list[tuple[str, str, float, int]]  # (true, predicted, rate, count), most faces first
    rare: list[str]  # classes with too few validation faces for a firm recall (see confusion_findings)
    train_share: np.ndarray | None = None  # (7,) share of each class among the training faces, when given

    # ------------------------------------------------------------------ small pieces
    @property
    def support(self) -> np.ndarray:
        return self.counts.sum(1)

    def _row(self, name: str) -> int:
        return CLASS_NAMES.index(name)

    def recall_of(self, name: str) -> float:
        return float(self.rates[self._row(name), self._row(name)])

    def recall_text(self, name: str) -> str:
        i = self._row(name)
        low, high = wilson_interval(self.counts[i, i], self.support[i])
        return (f"{name} {self.recall_of(name):.0%} ({_pct_interval(float(low), float(high))}, "
                f"{self.support[i]:,} faces)")

    def pair_interval(self, true: str, predicted: str) -> tuple[float, float]:
        i, j = self._row(true), self._row(predicted)
        low, high = wilson_interval(self.counts[i, j], self.support[i])
        return float(low), float(high)

    def pair_text(self, true: str, predicted: str) -> str:
        i, j = self._row(true), self._row(predicted)
        return (f"{true} -> {predicted} ({self.rates[i, j]:.0%} of {true}, {self.counts[i, j]} faces), "
                f"{_pct_interval(*self.pair_interval(true, predicted))}")

    def recalls_tie(self, a: str, b: str) -> bool:
        i, j = self._row(a), self._row(b)
        return proportions_tie(self.counts[i, i], self.support[i], self.counts[j, j], self.support[j])

    @property
    def common_hardest(self) -> list[str]:
        """Classes by recall, worst first, leaving out the rare ones."""
        return [c for c in self.hardest if c not in self.rare]

    @property
    def errors(self) -> dict[str, int]:
        """Misclassified validation faces per class."""
        return {n: int(self.support[i] - self.counts[i, i]) for i, n in enumerate(CLASS_NAMES)}

    def top_confusions(self, name: str) -> list[tuple[str, int]]:
        """(predicted class, faces) of the class's most frequent confusion and of every other confusion within
        noise of it (see counts_tie), most faces first; empty when no face of the class was misclassified."""
        i = self._row(name)
        order = [j for j in np.argsort(-self.counts[i], kind="stable") if j != i and self.counts[i, j] > 0]
        if not order:
            return []
        top = self.counts[i, order[0]]
        return [(CLASS_NAMES[j], int(self.counts[i, j])) for j in order
                if j == order[0] or counts_tie(int(top), int(self.counts[i, j]))]

    def confusion_text(self, name: str) -> str:
        """How a class is mostly mistaken, naming near-ties: "Sad and Surprise about equally (60 vs 58 faces)"."""
        tops = self.top_confusions(name)
        if not tops:
            return "nothing (no errors)"
        if len(tops) == 1:
            p, n = tops[0]
            return f"{p} ({n} faces, {n / self.support[self._row(name)]:.0%} of {name})"
        names = [p for p, _ in tops]
        joined = ", ".join(names[:-1]) + " and " + names[-1]
        counted = " vs ".join(str(n) for _, n in tops)
        if tops[0][1] < 20:  # a difference like 11 vs 5 is within noise, but "about equally" would read as false
            return f"{joined}, too few faces to tell which more often ({counted} faces)"
        return f"{joined} about equally ({counted} faces)"

    @property
    def main_pair(self) -> tuple[str, str] | None:
        """The main confusion: the off-diagonal cell with the most faces (``confused_pairs`` is ranked the same
        way, so it heads the ranked table), or None without errors."""
        return (self.confused_pairs[0][0], self.confused_pairs[0][1]) if self.confused_pairs else None

    def runner_up_ties(self) -> bool:
        """Whether the second-ranked confusion is within noise of the main one (see counts_tie)."""
        return len(self.confused_pairs) > 1 and counts_tie(self.confused_pairs[0][3], self.confused_pairs[1][3])

    def top_pairs(self, k: int = 3) -> list[tuple[str, str]]:
        """The ``k`` most confused (true, predicted) pairs by faces, the main one first."""
        return [(t, p) for t, p, _, _ in self.confused_pairs[:k]]

    def frequency_correlation(self) -> float | None:
        """Spearman rank correlation between training frequency and validation recall over the classes present."""
        if self.train_share is None:
            return None
        from scipy.stats import spearmanr

        present = self.support > 0
        if present.sum() < 3:
            return None
        rho = spearmanr(self.train_share[present], np.diag(self.rates)[present]).statistic
        return None if np.isnan(rho) else float(rho)

    # ------------------------------------------------------------------ tables and sentences
    def class_table(self):
        """Per class: faces, training share, precision, recall with its 95% interval, F1, main confusion."""
        import pandas as pd

        table = pd.DataFrame({
            "validation faces": self.support.astype(int),
            "precision": self.report["precision"], "recall": self.report["recall"],
            "recall 95% CI": [f"{lo:.0%}-{hi:.0%}"
                              for lo, hi in zip(self.report["recall_low"], self.report["recall_high"])],
            "F1": self.report["F1"],
            "most often mistaken for": [self.confusion_text(n) if self.support[i] else "no faces"
                                        for i, n in enumerate(CLASS_NAMES)],
        }, index=list(CLASS_NAMES))
        if self.train_share is not None:
            table.insert(1, "share of training faces", self.train_share)
        return table

    def pairs_table(self, limit: int = 6):
        import pandas as pd

        rows = [{"rank": k + 1, "true": t, "predicted": p, "faces": n, "share of true class": r,
                 "95% CI": "{:.0%}-{:.0%}".format(*self.pair_interval(t, p))}
                for k, (t, p, r, n) in enumerate(self.confused_pairs[:limit])]
        return pd.DataFrame(rows, columns=["rank", "true", "predicted", "faces", "share of true class", "95% CI"])

    def figure_alt(self) -> str:
        """Alt text of the confusion-matrix figure: what it shows and its main numbers."""
        n = int(self.support.sum())
        recalls = ", ".join(f"{c} {self.rates[i, i]:.0%}" for i, c in enumerate(CLASS_NAMES) if self.support[i])
        text = (f"Two heat maps of the 7 by 7 confusion matrix on {n:,} validation faces, rows the true class and "
                f"columns the predicted one: counts on the left, percentages of each true class on the right. "
                f"Diagonal (recall): {recalls}.")
        if self.main_pair:
            t, p, rate, k = self.confused_pairs[0]
            text += f" Largest off-diagonal cell: {t} predicted as {p}, {k} faces ({rate:.0%} of {t})."
        return text

    def rare_sentence(self) -> str:
        if not self.rare:
            return ""
        median = int(np.median(self.support[self.support > 0]))
        names = " and ".join(f"{n} ({self.support[self._row(n)]} faces)" for n in self.rare)
        return (f"{names} {'has' if len(self.rare) == 1 else 'have'} under a quarter of the median class's "
                f"{median} validation faces, so {'its' if len(self.rare) == 1 else 'their'} recall is the least "
                "certain; it is ranked, but claims about the hardest class are also checked without it.")

    def sentences(self) -> list[str]:
        n = int(self.support.sum())
        low, high = wilson_interval(np.trace(self.counts), n)
        lines = [f"Validation accuracy {self.accuracy:.1%} (95% CI {low:.1%}-{high:.1%}, {n:,} faces).",
                 f"Easiest classes (highest recall): {'; '.join(self.recall_text(c) for c in self.easiest[:2])}. "
                 f"Hardest: {'; '.join(self.recall_text(c) for c in self.hardest[:2])}."]
        if self.rare:
            lines.append(self.rare_sentence())
        if self.confused_pairs:
            pairs = "; ".join(self.pair_text(t, p) for t, p, _, _ in self.confused_pairs[:3])
            lines.append(f"Most confused pairs, by the number of faces: {pairs}.")
        ties = [f"{n} is mistaken for {self.confusion_text(n)}" for n in CLASS_NAMES
                if len(self.top_confusions(n)) > 1]
        if ties:
            lines.append("Near-ties (the top confusions of a class within noise of each other): "
                         + "; ".join(ties) + ".")
        rho = self.frequency_correlation()
        if rho is not None:
            present = [i for i in range(len(CLASS_NAMES)) if self.support[i] > 0]
            rarest = CLASS_NAMES[min(present, key=lambda i: self.train_share[i])]
            lines.append(f"Recall against training frequency: Spearman rank correlation {rho:+.2f} over "
                         f"{len(present)} classes; the rarest class in training, {rarest} "
                         f"({self.train_share[self._row(rarest)]:.1%} of the training faces), has recall "
                         f"{self.recall_of(rarest):.0%}.")
        return lines

    def answer(self, evidence: str = "") -> str:
        """The short answer to Q3: easiest and hardest classes, the main confusion, then ``evidence`` (FER+)."""
        if not self.easiest:
            return "No labeled validation faces: nothing to analyse."
        easy = " and ".join(f"{c} ({self.recall_of(c):.0%})" for c in self.easiest[:2])
        parts = [f"{easy} are recognised best (recall)"]
        common = self.common_hardest
        if common:
            parts.append(f"{common[0]} is the hardest class{' with enough faces' if self.rare else ''} "
                         f"({self.recall_of(common[0]):.0%})")
        for r in self.rare:
            parts.append(f"{r}'s {self.recall_of(r):.0%} rests on only {self.support[self._row(r)]} faces")
        text = "; ".join(parts) + "."
        if self.main_pair:
            t, p, rate, n = self.confused_pairs[0]
            text += f" The main confusion (the most faces) is {t} -> {p}: {n} faces, {rate:.0%} of {t}"
            if self.runner_up_ties():
                t2, p2, _, n2 = self.confused_pairs[1]
                text += f", about as many as {t2} -> {p2} ({n2} faces)"
            text += "."
        return text + (f" {evidence}" if evidence else "")

    def seed_claims(self) -> list[ClaimCheck]:
        """The seed report's claims, each with whether this run reproduces it, the nuance, and the evidence."""
        return [self._claim_easiest(), self._claim_fear_hardest(), self._claim_fear_to_sad()]

    def _claim_easiest(self) -> ClaimCheck:
        claim = "Happy and Surprise are the easiest classes"
        top = self.easiest[:3]
        holds = set(top[:2]) == {"Happy", "Surprise"}
        evidence = "the highest recalls are " + ", ".join(self.recall_text(c) for c in top)
        if holds:
            near = len(top) > 2 and self.recalls_tie(top[1], top[2])
            verdict = f"reproduced, but {top[2]} is within noise of {top[1]}" if near else "reproduced"
        else:
            second = top[1] if len(top) > 1 else top[0]
            within = all(c in top[:2] or self.recalls_tie(c, second) for c in ("Happy", "Surprise"))
            verdict = "not reproduced, but within noise" if within else "not reproduced"
        return ClaimCheck(claim, holds, verdict, evidence)

    def _claim_fear_hardest(self) -> ClaimCheck:
        claim = "Fear is the most misclassified class"
        if self.support[self._row("Fear")] == 0:
            return ClaimCheck(claim, False, "cannot be checked", "no Fear faces in the validation split")
        worst, common = self.hardest[0], self.common_hardest
        most_errors = max(self.errors, key=self.errors.get)
        evidence = f"lowest recall: {self.recall_text(worst)}"
        if worst != "Fear" and common and worst in self.rare:
            evidence += f"; among classes with enough faces: {self.recall_text(common[0])}"
        if common and common[0] != "Fear":
            evidence += f"; Fear: {self.recall_text('Fear')}"
        evidence += f"; most misclassified faces: {most_errors} ({self.errors[most_errors]})"
        if worst == "Fear" or (common and common[0] == "Fear"):
            holds, verdict = True, "reproduced by rate (recall)"
            if worst != "Fear":
                verdict += f" among classes with enough faces ({', '.join(self.rare)} too few)"
            if most_errors != "Fear":
                alike = counts_tie(self.errors[most_errors], self.errors["Fear"])
                larger = self.support[self._row(most_errors)] > self.support[self._row("Fear")]
                verdict += (f"; by count {most_errors} has {'about as many' if alike else 'more'} misclassified faces "
                            f"({self.errors[most_errors]} vs {self.errors['Fear']})"
                            + (f", {most_errors} being the larger class" if larger else ""))
        else:
            holds = False
            ref = common[0] if common else worst
            verdict = "not reproduced, but within noise" if self.recalls_tie("Fear", ref) else "not reproduced"
        return ClaimCheck(claim, holds, verdict, evidence)

    def _claim_fear_to_sad(self) -> ClaimCheck:
        claim = "Fear is most often mistaken for Sad"
        tops = self.top_confusions("Fear")
        if not tops:
            return ClaimCheck(claim, False, "cannot be checked", "no misclassified Fear faces")
        names = [p for p, _ in tops]
        evidence = f"Fear faces are most often predicted as {self.confusion_text('Fear')}"
        if names[0] == "Sad":
            holds, verdict = True, "reproduced" if len(tops) == 1 else "reproduced, as a near-tie"
        else:
            holds = False
            verdict = "not reproduced (a near-tie)" if "Sad" in names else "not reproduced"
            if "Sad" not in names:
                sad = self.counts[self._row("Fear"), self._row("Sad")]
                evidence += f"; Sad: {sad} faces"
        return ClaimCheck(claim, holds, verdict, evidence)


def confusion_findings(y_true: np.ndarray, y_pred: np.ndarray, train_labels: np.ndarray | None = None,
                       rare_fraction: float = 0.25) -> ConfusionFindings:
    """Confusion matrix, per-class precision/recall/F1 (scikit-learn) with Wilson intervals, and the Q3 findings.

    A class is *rare* when it has fewer than ``rare_fraction`` of the median class's validation faces (FER2013's
    Disgust): its recall is reported but too uncertain to carry "the hardest class" alone. ``train_labels`` (the
    run's training faces) adds each class's training frequency.
    """
    import pandas as pd
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(CLASS_NAMES)))
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    rates = counts / counts.sum(1, keepdims=True).clip(min=1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    low, high = wilson_interval(np.diag(counts), support)
    report = pd.DataFrame({"precision": precision, "recall": recall, "recall_low": low, "recall_high": high,
                           "F1": f1, "support": support}, index=CLASS_NAMES)
    present = [i for i in labels if support[i] > 0]
    by_recall = sorted(present, key=lambda i: -recall[i])
    pairs = [(CLASS_NAMES[i], CLASS_NAMES[j], float(rates[i, j]), int(counts[i, j]))
             for i in present for j in labels if i != j and counts[i, j] > 0]
    pairs.sort(key=lambda p: (-p[3], -p[2]))  # by faces: the ranking that defines the main confusion
    median = np.median(support[present]) if present else 0
    rare = [CLASS_NAMES[i] for i in present if support[i] < rare_fraction * median]
    share = None
    if train_labels is not None and len(train_labels):
        share = np.bincount(np.asarray(train_labels), minlength=len(CLASS_NAMES)) / len(train_labels)
    return ConfusionFindings(counts, rates, report, float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
                             [CLASS_NAMES[i] for i in by_recall], [CLASS_NAMES[i] for i in by_recall[::-1]], pairs,
                             rare, share)


def misclassified(y_true: np.ndarray, y_pred: np.ndarray, true_name: str, pred_name: str, limit: int = 8) -> np.ndarray:
    """Indices of faces of class ``true_name`` predicted as ``pred_name`` (first ``limit``)."""
    t, p = CLASS_NAMES.index(true_name), CLASS_NAMES.index(pred_name)
    return np.flatnonzero((np.asarray(y_true) == t) & (np.asarray(y_pred) == p))[:limit]


# --------------------------------------------------------------------------------------------- Q3: calibration


RELIABILITY_BINS = 15  # equal-width confidence bins, as calibration.expected_calibration_error uses


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = RELIABILITY_BINS):
    """Per equal-width bin of the top probability: faces, mean confidence and accuracy (empty bins left out)."""
    import pandas as pd

    probs, labels = np.asarray(probs), np.asarray(labels)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    rows = [{"low": edges[b], "high": edges[b + 1], "faces": int((which == b).sum()),
             "confidence": float(conf[which == b].mean()), "accuracy": float(correct[which == b].mean())}
            for b in range(bins) if (which == b).any()]
    return pd.DataFrame(rows, columns=["low", "high", "faces", "confidence", "accuracy"])


@dataclass
class CalibrationFindings:
    temperature: float  # fitted on all validation faces (what the shipped calibration uses)
    ece_before: float
    ece_after: float  # with that temperature, on the same faces
    ece_after_held_out: float  # temperature fitted on one half, ECE measured on the other, averaged over the halves
    mean_confidence: float  # before scaling
    accuracy: float
    faces: int
    before: "object"  # reliability_bins before scaling
    after: "object"  # ... after

    def sentence(self) -> str:
        direction = "over-confident" if self.mean_confidence > self.accuracy else "under-confident"
        return (f"Before scaling, the model is {direction}: its mean top probability is {self.mean_confidence:.1%} "
                f"against an accuracy of {self.accuracy:.1%} on {self.faces:,} validation faces, and the expected "
                f"calibration error (ECE, {RELIABILITY_BINS} equal-width bins) is {self.ece_before:.1%}. Dividing the "
                f"logits by one temperature, T = {self.temperature:.2f}, fitted on validation, brings it to "
                f"{self.ece_after:.1%}; fitted on one half of the faces and measured on the other (so the faces that "
                f"set T do not grade it) it is {self.ece_after_held_out:.1%}. Scaling changes no prediction. "
                + self._verdict())

    def _verdict(self) -> str:
        gain = self.ece_before - self.ece_after_held_out
        if abs(self.temperature - 1) < 0.05 or gain < 0.005:
            return (f"With T this close to 1 the scaling makes no real difference (held out: {gain * 100:+.1f} "
                    "points of ECE): the trained model's probabilities are already about as calibrated as one "
                    "temperature can make them.")
        return f"The scaling is a real improvement: {gain * 100:.1f} points less ECE on faces that did not set T."


def calibration_findings(logits, labels, seed: int = 0) -> CalibrationFindings:
    """Temperature scaling on validation logits: ECE before, after, and after with T fitted on the other half."""
    import torch

    from .calibration import calibrate, expected_calibration_error, fit_temperature

    logits = torch.as_tensor(logits, dtype=torch.float32)
    labels = np.asarray(labels)
    fitted = calibrate(logits, labels)
    t = fitted["temperature"]
    before = torch.softmax(logits, 1).numpy()
    after = torch.softmax(logits / t, 1).numpy()
    halves = np.array_split(np.random.default_rng(seed).permutation(len(labels)), 2)
    held_out = []
    for a, b in ((0, 1), (1, 0)):
        fit, test = halves[a], halves[b]
        if len(fit) and len(test):
            t_half = fit_temperature(logits[fit], labels[fit])
            held_out.append(expected_calibration_error(torch.softmax(logits[test] / t_half, 1).numpy(), labels[test]))
    return CalibrationFindings(t, fitted["ece_before"], fitted["ece_after"],
                               float(np.mean(held_out)) if held_out else float("nan"),
                               float(before.max(1).mean()), float((before.argmax(1) == labels).mean()), len(labels),
                               reliability_bins(before, labels), reliability_bins(after, labels))


# --------------------------------------------------------------------------------------------- Q3: copies


@dataclass
class CopyAccuracy:
    """Accuracy on validation faces with and without a copy in the training part (a split that allows copies)."""

    with_copy: int
    with_copy_correct: int
    without_copy: int
    without_copy_correct: int

    def sentence(self) -> str:
        def part(k, n):
            low, high = wilson_interval(k, n)
            return f"{k / max(n, 1):.1%} of {n:,} (95% CI {float(low):.1%}-{float(high):.1%})"

        tie = proportions_tie(self.with_copy_correct, self.with_copy, self.without_copy_correct, self.without_copy)
        return (f"the model is right on {part(self.with_copy_correct, self.with_copy)} validation faces that have a "
                f"copy in its training part, and on {part(self.without_copy_correct, self.without_copy)} without one"
                + (": within noise of each other." if tie else "."))


def accuracy_by_copy(y_true: np.ndarray, y_pred: np.ndarray, has_copy: np.ndarray) -> CopyAccuracy:
    right, has_copy = np.asarray(y_true) == np.asarray(y_pred), np.asarray(has_copy, dtype=bool)
    return CopyAccuracy(int(has_copy.sum()), int((right & has_copy).sum()), int((~has_copy).sum()),
                        int((right & ~has_copy).sum()))


# --------------------------------------------------------------------------------------------- appendix: recipe

# a clause about the test set ("on the hidden test", "test-set accuracy"); "test-time views" are not about it
_TEST_CLAUSE = re.compile(r"\b(hidden )?test(?!-time)(-set| set)?\b", re.I)


def recipe_table(table):
    """The recipe's measurements (docs/ablation.csv) for the appendix page: missing values shown as "—", and any
    clause about test-set results left out (choices rest on validation only). Returns (table, clauses left out)."""
    import pandas as pd

    table = table.copy()
    dropped = 0
    for column in table.columns:
        cleaned = []
        for value in table[column]:
            if isinstance(value, str) and _TEST_CLAUSE.search(value):
                parts = re.split(r";\s*", value)
                kept = [p for p in parts if not _TEST_CLAUSE.search(p)]
                dropped += len(parts) - len(kept)
                value = "; ".join(kept)
            cleaned.append(value)
        table[column] = pd.Series(cleaned, index=table.index, dtype=object)
    return table.astype(object).where(table.notna(), "—").replace("", "—"), dropped
