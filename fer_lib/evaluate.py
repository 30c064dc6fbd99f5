"""Prediction (with optional flip test-time augmentation), accuracy, the confusion matrix and its findings."""
from __future__ import annotations

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


# --------------------------------------------------------------------------------------------- Q2: history


@dataclass
class HistoryFindings:
    epochs: int  # epochs in the history
    best_epoch: int  # first epoch with the best validation accuracy (the weights best.pt holds)
    best_val_acc: float
    train_acc_at_best: float
    final_train_acc: float
    final_val_acc: float
    final_gap: float  # train accuracy - validation accuracy at the last epoch
    n_val: int  # validation faces
    val_se: float  # standard error of the best validation accuracy, sqrt(p(1-p)/n)
    window: int  # "the last few epochs": how many are compared with the ones before them
    recent_best: float  # best validation accuracy in the last `window` epochs
    earlier_best: float | None  # best validation accuracy before them (None: the run is too short)
    trend: str  # "still improving", "levelled off", "declining" or "too short to tell"
    train_loss_column: str  # "train_ce" (plain cross-entropy, comparable with val_loss) or "train_loss"
    final_train_loss: float
    final_val_loss: float
    val_loss_falling_at_end: bool  # validation loss went down over the last epoch
    val_loss_rising_since: int | None  # first epoch after which validation loss only went up, if it did
    best_val_acc_tta: float | None  # best validation accuracy with flip test-time augmentation, if recorded
    missing: list[str]  # columns this (older) history does not record
    verdict: str  # "overfits", "underfits" or "fits well"

    @property
    def comparable_losses(self) -> bool:
        return self.train_loss_column == "train_ce"

    def verdict_sentence(self) -> str:
        train_vs_val = (f"training accuracy ends {abs(self.final_gap) * 100:.1f} points "
                        f"{'above' if self.final_gap >= 0 else 'below'} validation accuracy "
                        f"({self.final_train_acc:.1%} vs {self.final_val_acc:.1%})")
        if self.verdict == "overfits":
            reasons = [train_vs_val] if self.final_gap > 0 else []
            if self.val_loss_rising_since:
                reasons.append(f"validation loss rises from epoch {self.val_loss_rising_since} on")
            if self.trend == "declining":
                reasons.append("validation accuracy fell from its best")
            return "The model overfits: " + " and ".join(reasons) + "."
        if self.verdict == "underfits":
            return (f"The model underfits: {train_vs_val}, so it does not yet fit even the training faces well "
                    "(more epochs or capacity would help).")
        return f"No strong over- or underfitting: {train_vs_val} and validation loss did not rise."

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
        if self.trend == "still improving":
            return (f"Validation accuracy was still improving when the schedule ended: {last} is {diff:.1f} points "
                    f"above {before}, more than {noise}; a longer schedule would likely help.")
        if self.trend == "declining":
            return (f"Validation accuracy declined at the end: {last} is {-diff:.1f} points below {before}, more "
                    f"than {noise}.")
        return (f"Validation accuracy had levelled off when the schedule ended: {last} is within {noise} of "
                f"{before}.")

    def loss_sentence(self) -> str:
        direction = "still falling" if self.val_loss_falling_at_end else "no longer falling"
        if self.comparable_losses:
            return (f"Plain cross-entropy at the last epoch: {self.final_train_loss:.3f} on the training batches "
                    f"(augmented, dropout on) and {self.final_val_loss:.3f} on validation, whose loss is "
                    f"{direction}.")
        return (f"This run's history predates the plain training cross-entropy column, so the training curve is "
                f"the optimised label-smoothed loss ({self.final_train_loss:.3f} at the last epoch), which cannot "
                f"reach zero and is not comparable in level with validation cross-entropy "
                f"({self.final_val_loss:.3f}, {direction}).")

    def sentences(self) -> list[str]:
        lines = [f"Best validation accuracy {self.best_val_acc:.1%} at epoch {self.best_epoch} of {self.epochs} "
                 f"(training accuracy then {self.train_acc_at_best:.1%}).",
                 self.verdict_sentence(), self.trend_sentence(), self.loss_sentence()]
        if self.best_val_acc_tta is not None:
            lines.append(f"With horizontal-flip test-time augmentation (as for the test predictions) the best "
                         f"validation accuracy is {self.best_val_acc_tta:.1%}.")
        if self.missing:
            names = {"train_ce": "plain training cross-entropy",
                     "val_acc_tta": "validation accuracy with flip test-time augmentation"}
            lines.append(f"This run's history (an older format) does not record "
                         f"{' or '.join(names[c] for c in self.missing)}; the figure shows what it does record.")
        return lines

    def sentence(self) -> str:
        return " ".join(self.sentences())

    def answer(self) -> str:
        """The short answer to Q2: the verdict, the best epoch and whether validation was still improving."""
        return " ".join([self.verdict_sentence(),
                         f"Validation accuracy peaks at {self.best_val_acc:.1%} (epoch {self.best_epoch} of "
                         f"{self.epochs}).", self.trend_sentence()])


def _recorded(history, column: str) -> bool:
    return column in history.columns and history[column].notna().all()


def history_findings(history, n_val: int, gap_overfit: float = 0.10, underfit_train_acc: float = 0.6,
                     window: int | None = None) -> HistoryFindings:
    """Findings computed from a history table (pandas DataFrame with the train.HISTORY_COLUMNS).

    ``n_val`` (validation faces) sets the noise level: one standard error sqrt(p(1-p)/n) of the best validation
    accuracy is the tolerance when the best of the last ``window`` epochs (default a fifth of the run, at least
    one) is compared with the best before them. Older histories without ``train_ce`` / ``val_acc_tta`` are
    handled: the findings say what is missing. Training accuracy is measured on augmented batches with dropout
    on, so it understates how well the model fits the training faces; the gap thresholds are rules of thumb.
    """
    epochs = len(history)
    best = history.loc[history["val_acc"].idxmax()]  # idxmax: the first best epoch, as best.pt keeps
    last = history.iloc[-1]
    gap = float(last["train_acc"] - last["val_acc"])
    p = float(best["val_acc"])
    se = float(np.sqrt(p * (1 - p) / max(n_val, 1)))

    val_acc = history["val_acc"].to_numpy(dtype=float)
    window = window or max(1, round(epochs / 5))
    window = min(window, epochs - 1)
    if window >= 1:
        recent, earlier = float(val_acc[-window:].max()), float(val_acc[:-window].max())
        diff = recent - earlier
        trend = "still improving" if diff > se else "declining" if diff < -se else "levelled off"
    else:
        recent, earlier, trend, window = float(val_acc.max()), None, "too short to tell", 0

    val_loss = history["val_loss"].to_numpy(dtype=float)
    rising = None
    low = int(val_loss.argmin())
    if low < len(val_loss) - 2 and val_loss[-1] > val_loss[low] * 1.05:  # 5%: a rule of thumb for noise
        rising = int(history["epoch"].iloc[low]) + 1

    train_loss_column = "train_ce" if _recorded(history, "train_ce") else "train_loss"
    missing = [c for c in ("train_ce", "val_acc_tta") if not _recorded(history, c)]
    tta = float(history["val_acc_tta"].max()) if _recorded(history, "val_acc_tta") else None

    if gap > gap_overfit or rising or trend == "declining":
        verdict = "overfits"
    elif last["train_acc"] < underfit_train_acc and gap < gap_overfit / 2:
        verdict = "underfits"
    else:
        verdict = "fits well"
    return HistoryFindings(
        epochs=epochs, best_epoch=int(best["epoch"]), best_val_acc=p, train_acc_at_best=float(best["train_acc"]),
        final_train_acc=float(last["train_acc"]), final_val_acc=float(last["val_acc"]), final_gap=gap, n_val=n_val,
        val_se=se, window=window, recent_best=recent, earlier_best=earlier, trend=trend,
        train_loss_column=train_loss_column, final_train_loss=float(last[train_loss_column]),
        final_val_loss=float(val_loss[-1]), val_loss_falling_at_end=bool(epochs > 1 and val_loss[-1] < val_loss[-2]),
        val_loss_rising_since=rising, best_val_acc_tta=tta, missing=missing, verdict=verdict)


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
    confused_pairs: list[tuple[str, str, float, int]]  # (true, predicted, rate, count), most confused first
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
        return f"{name} {self.recall_of(name):.0%} ({_pct_interval(float(low), float(high))}, {self.support[i]:,} faces)"

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
        return f"{joined} about equally ({' vs '.join(str(n) for _, n in tops)} faces)"

    @property
    def main_pair(self) -> tuple[str, str] | None:
        """The most confused pair whose true class is not rare (the rare ones are listed apart), or None."""
        for t, p, _, _ in self.confused_pairs:
            if t not in self.rare:
                return t, p
        return (self.confused_pairs[0][0], self.confused_pairs[0][1]) if self.confused_pairs else None

    def top_pairs(self, k: int = 3) -> list[tuple[str, str]]:
        """The main pair first, then the other most confused pairs: ``k`` (true, predicted) pairs in all."""
        main = self.main_pair
        rest = [(t, p) for t, p, _, _ in self.confused_pairs if (t, p) != main]
        return ([main] if main else []) + rest[:k - 1 if main else k]

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
            "recall 95% CI": [f"{lo:.0%}-{hi:.0%}" for lo, hi in zip(self.report["recall_low"], self.report["recall_high"])],
            "F1": self.report["F1"],
            "most often mistaken for": [self.confusion_text(n) if self.support[i] else "no faces"
                                        for i, n in enumerate(CLASS_NAMES)],
        }, index=list(CLASS_NAMES))
        if self.train_share is not None:
            table.insert(1, "share of training faces", self.train_share)
        return table

    def pairs_table(self, limit: int = 6):
        import pandas as pd

        rows = [{"true": t, "predicted": p, "faces": n, "share of true class": r,
                 "95% CI": "{:.0%}-{:.0%}".format(*self.pair_interval(t, p))}
                for t, p, r, n in self.confused_pairs[:limit]]
        return pd.DataFrame(rows, columns=["true", "predicted", "faces", "share of true class", "95% CI"])

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
            lines.append(f"Most confused pairs: {pairs}.")
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
            t, p = self.main_pair
            tops = self.top_confusions(t)
            if len(tops) > 1:
                text += f" The main confusion: {t} is mistaken for {self.confusion_text(t)}."
            else:
                i, j = self._row(t), self._row(p)
                text += (f" The main confusion is {t} -> {p} ({self.rates[i, j]:.0%} of {t}, "
                         f"{self.counts[i, j]} faces).")
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
        if worst == "Fear":
            holds, verdict = True, "reproduced"
        elif common and common[0] == "Fear":
            holds, verdict = True, f"reproduced among classes with enough faces ({', '.join(self.rare)} too few)"
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
    pairs.sort(key=lambda p: (-p[2], -p[3]))
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


def confident_correct(probs: np.ndarray, labels: np.ndarray, per_class: int = 1,
                      most_confident: bool = True) -> np.ndarray:
    """Indices of correctly classified faces, up to ``per_class`` per class, ordered by class.

    Within a class: the faces the model is surest of first, or (``most_confident=False``) in data order.
    Classes with no correct face are skipped.
    """
    correct = probs.argmax(1) == labels
    chosen = []
    for c in range(probs.shape[1]):
        idx = np.flatnonzero(correct & (labels == c))
        if most_confident:
            idx = idx[np.argsort(-probs[idx, c], kind="stable")]
        chosen.extend(idx[:per_class])
    return np.array(chosen, dtype=np.int64)
