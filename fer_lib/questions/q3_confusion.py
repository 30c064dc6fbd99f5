"""Q3: the confusion matrix, per-class metrics, calibration and accuracy by copy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer_lib import CLASS_NAMES
from fer_lib.core.stats import counts_tie, proportions_tie, wilson_interval


def _pct_interval(low: float, high: float) -> str:
    return f"95% CI {low:.0%}-{high:.0%}"

# --------------------------------------------------------------------------------------------- uncertainty


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

    from fer_lib.model.calibration import calibrate, expected_calibration_error, fit_temperature

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

