"""Q3: the confusion matrix, per-class metrics, ranked confusions, calibration and the feature map, as numbers.

One rule for ties: two shares (two recalls, two confusion rates, two cells' counts as shares of all faces) are tied
when a two-proportion z-test at 5% finds no difference (``core.stats.proportions_tie``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from fer_lib import CLASS_NAMES
from fer_lib.core.stats import proportions_tie, wilson_interval


@dataclass
class ClaimCheck:
    """One claim of the seed report checked against this run."""

    claim: str  # "happy_surprise_easiest", "fear_hardest" or "fear_to_sad"
    holds: bool | None  # None: cannot be checked here (no faces of the class, or no error to rank)
    rival: str | None  # the class that decides: the runner-up, or the one that takes the claimed place
    tie: bool  # claim and rival within noise of each other (a two-proportion z-test at 5%)


@dataclass
class ConfusionFindings:
    counts: np.ndarray  # (7, 7): rows true class, columns predicted
    rates: np.ndarray  # row-normalised: rates[i, j] = share of true class i predicted as j
    report: "object"  # DataFrame per class: support, precision, recall, F1, each with _low/_high (95% intervals)
    accuracy: float
    accuracy_interval: tuple[float, float]  # 95% Wilson
    macro_f1: float  # unweighted mean of the per-class F1 over the classes with validation faces (scikit-learn)
    macro_f1_interval: tuple[float, float]  # 95% percentile bootstrap over the faces
    easiest: list[str]  # classes with faces by recall, best first
    pairs: "object"  # DataFrame, one row per off-diagonal cell with faces: true, predicted, faces, rate, low, high
    rare: list[str]  # classes with under a quarter of the median class's validation faces (FER2013's Disgust)
    train_share: np.ndarray | None = None  # (7,) share of each class among the training faces, when given

    @property
    def support(self) -> np.ndarray:
        return self.counts.sum(1)

    @property
    def faces(self) -> int:
        return int(self.counts.sum())

    def recalls_tie(self, a: str, b: str) -> bool:
        i, j = CLASS_NAMES.index(a), CLASS_NAMES.index(b)
        return proportions_tie(self.counts[i, i], self.support[i], self.counts[j, j], self.support[j])

    @property
    def common_hardest(self) -> list[str]:
        """Classes by recall, worst first, leaving out the rare ones (too few faces to rank)."""
        return [c for c in self.easiest[::-1] if c not in self.rare]

    def ranked(self, by: str = "faces"):
        """The confusions ranked by ``faces`` (most faces first) or by ``rate`` (share of the true class), with
        ``rank`` from 1 and ``ties_top``: tied with rank 1 (counts as shares of all faces, rates of their class)."""
        table = self.pairs.sort_values([by, "rate" if by == "faces" else "faces"], ascending=False, kind="stable")
        table = table.reset_index(drop=True)
        table.insert(0, "rank", np.arange(1, len(table) + 1))
        of = [self.faces if by == "faces" else int(self.support[CLASS_NAMES.index(t)]) for t in table["true"]]
        table["ties_top"] = [proportions_tie(k, n, table["faces"].iloc[0], of[0]) for k, n in zip(table["faces"], of)]
        return table

    def top_confusions(self, name: str) -> list[tuple[str, int]]:
        """(predicted class, faces) of the class's most frequent confusion and of every other confusion tied with
        it, most faces first; empty when no face of the class was misclassified."""
        i = CLASS_NAMES.index(name)
        n, order = int(self.support[i]), [j for j in np.argsort(-self.counts[i], kind="stable") if j != i]
        top = int(self.counts[i, order[0]])
        return [(CLASS_NAMES[j], int(self.counts[i, j])) for j in order
                if self.counts[i, j] and proportions_tie(int(self.counts[i, j]), n, top, n)]

    def frequency_correlation(self) -> float | None:
        """Spearman rank correlation between training frequency and validation recall over the classes present."""
        from scipy.stats import spearmanr

        present = self.support > 0
        if self.train_share is None or present.sum() < 3:
            return None
        rho = spearmanr(self.train_share[present], np.diag(self.rates)[present]).statistic
        return None if np.isnan(rho) else float(rho)

    def seed_claims(self) -> list[ClaimCheck]:
        """The seed report's three claims: Happy and Surprise easiest, Fear hardest, Fear mostly taken for Sad."""
        top, claimed, hard = self.easiest, ("Happy", "Surprise"), self.common_hardest
        easiest = ClaimCheck("happy_surprise_easiest", None, None, False)
        if len(top) >= 3 and set(claimed) <= set(top):
            # it holds: the rival is the third class; it fails: the class that took a claimed place
            holds = set(top[:2]) == set(claimed)
            rival = top[2] if holds else next(c for c in top if c not in claimed)
            easiest = ClaimCheck(easiest.claim, holds, rival, self.recalls_tie(top[1] if holds else
                                                                               max(claimed, key=top.index), rival))
        hardest = ClaimCheck("fear_hardest", None, None, False)
        if "Fear" in hard and len(hard) >= 2:
            rival = hard[1] if hard[0] == "Fear" else hard[0]
            hardest = ClaimCheck(hardest.claim, hard[0] == "Fear", rival, self.recalls_tie("Fear", rival))
        names = [p for p, _ in self.top_confusions("Fear")]
        to_sad = ClaimCheck("fear_to_sad", None, None, False)
        if names and names[0] == "Sad":
            to_sad = ClaimCheck(to_sad.claim, True, names[1] if len(names) > 1 else None, len(names) > 1)
        elif names:
            to_sad = ClaimCheck(to_sad.claim, False, names[0], "Sad" in names)
        return [easiest, hardest, to_sad]


def confusion_findings(y_true: np.ndarray, y_pred: np.ndarray, train_labels: np.ndarray | None = None,
                       resamples: int = 1000) -> ConfusionFindings:
    """Confusion matrix, per-class precision/recall/F1 (scikit-learn) with 95% intervals (Wilson for precision and
    recall, a bootstrap over the faces for F1 and macro-F1), the confusions and the Q3 findings; ``train_labels``
    (the run's training faces) adds each class's training frequency."""
    import pandas as pd
    from scipy.stats import bootstrap
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    k, labels = len(CLASS_NAMES), list(range(len(CLASS_NAMES)))
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    support = counts.sum(1)
    rates = counts / support[:, None].clip(min=1)
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = [i for i in labels if support[i] > 0]

    def f1s(t, p, axis=-1):  # per-class F1 and macro-F1 (last row) of each resample, from its confusion matrix
        t, p = np.atleast_2d(t), np.atleast_2d(p)
        cells = (t * k + p + k * k * np.arange(len(t))[:, None]).ravel()
        m = np.bincount(cells, minlength=k * k * len(t)).reshape(len(t), k, k)
        both = m.sum(-2) + m.sum(-1)
        f = np.divide(2 * np.diagonal(m, axis1=-2, axis2=-1), both, out=np.zeros(both.shape), where=both > 0)
        return np.concatenate([f, f[:, present].mean(1, keepdims=True)], 1).T

    f_low = f_high = np.zeros(k + 1)
    if len(y_true):
        f_low, f_high = bootstrap((y_true, y_pred), f1s, n_resamples=resamples, paired=True, vectorized=True,
                                  method="percentile", batch=100, rng=0).confidence_interval
    (p_low, r_low), (p_high, r_high) = wilson_interval(np.diag(counts), np.stack([counts.sum(0), support]))
    report = pd.DataFrame({"support": support, "precision": precision, "precision_low": p_low,
                           "precision_high": p_high, "recall": recall, "recall_low": r_low, "recall_high": r_high,
                           "F1": f1, "F1_low": f_low[:k], "F1_high": f_high[:k]}, index=list(CLASS_NAMES))
    cells = [(i, j) for i in present for j in labels if i != j and counts[i, j] > 0]
    low, high = wilson_interval([counts[c] for c in cells], [support[i] for i, _ in cells])
    pairs = pd.DataFrame({"true": [CLASS_NAMES[i] for i, _ in cells], "predicted": [CLASS_NAMES[j] for _, j in cells],
                          "faces": [int(counts[c]) for c in cells], "rate": [float(rates[c]) for c in cells],
                          "low": low, "high": high})
    median = np.median(support[present]) if present else 0
    share = None if train_labels is None or not len(train_labels) else np.bincount(train_labels, minlength=k) / len(
        train_labels)
    n, correct = int(support.sum()), int(np.trace(counts))
    return ConfusionFindings(
        counts, rates, report, correct / max(n, 1), tuple(map(float, wilson_interval(correct, n))),
        float(f1s(y_true, y_pred)[k, 0]) if present else 0.0, (float(f_low[k]), float(f_high[k])),
        [CLASS_NAMES[i] for i in sorted(present, key=lambda i: -recall[i])], pairs,
        [CLASS_NAMES[i] for i in present if support[i] < 0.25 * median], share)


@dataclass
class CalibrationFindings:
    temperature: float  # fitted on all validation faces (what the shipped calibration uses)
    ece_before: float
    ece_after: float  # with that temperature, on the same faces
    ece_after_held_out: float  # temperature fitted on one half, ECE measured on the other, averaged over the halves
    mean_confidence: float  # before scaling
    accuracy: float
    faces: int
    before: "object"  # calibration.reliability_table before scaling
    after: "object"  # ... after

    @property
    def scaling_helps(self) -> bool:
        """Whether scaling is a real improvement: T not within 0.05 of 1 and at least half a point less ECE on
        faces that did not set T."""
        return abs(self.temperature - 1) >= 0.05 and self.ece_before - self.ece_after_held_out >= 0.005


def calibration_findings(logits, labels, seed: int = 0) -> CalibrationFindings:
    """Temperature scaling on validation logits: ECE before, after, and after with T fitted on the other half."""
    import torch

    from fer_lib.model.calibration import calibrate, expected_calibration_error, fit_temperature, reliability_table

    logits, labels = torch.as_tensor(logits, dtype=torch.float32), np.asarray(labels)
    fitted = calibrate(logits, labels)
    t = fitted["temperature"]
    before, after = torch.softmax(logits, 1).numpy(), torch.softmax(logits / t, 1).numpy()
    halves = np.array_split(np.random.default_rng(seed).permutation(len(labels)), 2)
    held_out = [expected_calibration_error(torch.softmax(logits[b] / fit_temperature(logits[a], labels[a]), 1).numpy(),
                                           labels[b]) for a, b in (halves, halves[::-1]) if len(a) and len(b)]
    return CalibrationFindings(t, fitted["ece_before"], fitted["ece_after"],
                               float(np.mean(held_out)) if held_out else float("nan"),
                               float(before.max(1).mean()), float((before.argmax(1) == labels).mean()), len(labels),
                               reliability_table(before, labels), reliability_table(after, labels))


def pooled_features(model, images: np.ndarray, input_size: int = 48) -> np.ndarray:
    """(N, 512) input of the last layer (Dropout + Linear: layer4's map averaged) for uint8 faces, no views."""
    from fer_lib.model.inference import predict_logits

    store = []
    handle = model.fc.register_forward_pre_hook(lambda module, inputs: store.append(inputs[0].float().cpu().numpy()))
    try:
        predict_logits(model, images, input_size)
    finally:
        handle.remove()
    return np.concatenate(store)


@dataclass
class FeatureMap:
    xy: np.ndarray  # (N, 2) t-SNE of the features (PCA to 50 dimensions first)
    labels: np.ndarray  # (N,)
    neighbours: np.ndarray  # (7, 7): row c, the share of class c's faces' k nearest neighbours (512-D) of each class
    knn_accuracy: float  # the label is the most common among a face's k nearest neighbours (ties: the first class)
    k: int


def feature_map(features, labels, k: int = 10, perplexity: float = 30.0, seed: int = 0) -> FeatureMap:
    """Nearest neighbours in the feature space (Euclidean, a face never its own) and a 2-D t-SNE map of it."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.neighbors import NearestNeighbors

    features, labels, c = np.asarray(features, dtype=np.float32), np.asarray(labels), len(CLASS_NAMES)
    near = labels[NearestNeighbors(n_neighbors=k).fit(features).kneighbors(return_distance=False)]  # (N, k)
    counts = np.bincount((labels[:, None] * c + near).ravel(), minlength=c * c).reshape(c, c)
    knn = (near[:, :, None] == np.arange(c)).sum(1).argmax(1) == labels
    xy = TSNE(2, perplexity=min(perplexity, (len(labels) - 1) / 3), init="pca", random_state=seed).fit_transform(
        PCA(min(50, *features.shape), random_state=seed).fit_transform(features))
    return FeatureMap(xy, labels, counts / counts.sum(1, keepdims=True).clip(1), float(knn.mean()), k)


@dataclass
class ConfusionAnswer:
    """Everything the Q3 page shows, on the validation faces with the run's own test-time views."""

    confusion: ConfusionFindings
    accuracy: "object"  # q2_history.RunAccuracy: the run's recorded figures (plain and with views)
    calibration: CalibrationFindings
    galleries: dict  # (true, predicted) -> first 8 validation faces, for the 3 top confusions by count and 1 by rate
    crowd: "object"  # q3_votes.CrowdEvidence, None without FER+ votes
    copies: "object"  # q2_history.SplitCopies
    test: dict | None  # the labelled test set's score, where the labels are known
    features: FeatureMap  # the validation faces' classifier inputs, mapped (plain faces, no test-time views)
    against_crowd: ConfusionFindings | None  # against the FER+ crowd majority, where a face has one (else None)


def confusion_answer(ctx) -> ConfusionAnswer:
    """Q3's one call, from a report context (``fer_lib.report.context.Context``)."""
    from fer_lib.core.io import default_cache_dir
    from fer_lib.questions.q2_history import run_accuracy, split_copies
    from fer_lib.questions.q3_votes import crowd_evidence, load_votes

    logits, val = ctx.val_logits_views, ctx.val
    y_pred = logits.argmax(1).numpy()
    f = confusion_findings(val.labels, y_pred, train_labels=ctx.split[0].labels)
    shown = list(dict.fromkeys([tuple(r) for r in f.ranked("faces")[["true", "predicted"]].to_numpy()[:3]]
                               + [tuple(r) for r in f.ranked("rate")[["true", "predicted"]].to_numpy()[:1]]))
    cfg, crowd = ctx.config, crowd_evidence(load_votes(ctx.dataset), val, y_pred, shown)
    clear = None if crowd is None else crowd.majority >= 0
    return ConfusionAnswer(
        f, run_accuracy(json.loads((ctx.run_dir / "run.json").read_text())),
        calibration_findings(logits, val.labels, seed=cfg.seed),
        {(t, p): np.flatnonzero((val.labels == CLASS_NAMES.index(t)) & (y_pred == CLASS_NAMES.index(p)))[:8]
         for t, p in shown},
        crowd,
        split_copies(ctx.dataset, ctx.split, cfg.val_fraction, cfg.seed, default_cache_dir()),
        (ctx.test_outputs() or {}).get("test"),
        feature_map(pooled_features(ctx.model(), val.images, cfg.input_size), val.labels, seed=cfg.seed),
        confusion_findings(crowd.majority[clear], y_pred[clear]) if crowd is not None and clear.any() else None)
