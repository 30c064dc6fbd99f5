"""Appendix: the recipe's measurements (docs/ablation.csv) as a table; the test-time views' gain, paired."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# a clause about the test set ("on the hidden test", "test-set accuracy"); "test-time views" are not about it
_TEST_CLAUSE = re.compile(r"\b(hidden )?test(?!-time)(-set| set)?\b", re.I)


def recipe_table(table):
    """The recipe's measurements (docs/ablation.csv) for the appendix page: missing values shown as "—", and any
    clause about test-set results left out (choices rest on validation only). Returns (table, clauses left out)."""
    def clauses(value):  # (the ;-separated clauses of a cell that mentions the test set, how many of them do)
        parts = re.split(r";\s*", value) if isinstance(value, str) and _TEST_CLAUSE.search(value) else []
        kept = [p for p in parts if not _TEST_CLAUSE.search(p)]
        return ("; ".join(kept) if parts else value), len(parts) - len(kept)

    cells = table.astype(object).map(clauses)
    shown = cells.map(lambda cell: cell[0])
    return shown.where(shown.notna(), "—").replace("", "—"), int(cells.map(lambda cell: cell[1]).to_numpy().sum())


def speedups(table, choice: str = "precision (speed)"):
    """The speed ratios measured in the first row of ``choice``: each "A vs B" of its result (the chosen setting's
    images per second against the alternative's) as A / B. Empty when the table has no such row."""
    rows = table.loc[table["choice"] == choice, "result"]
    pairs = re.findall(r"(\d+(?:\.\d+)?) vs (\d+(?:\.\d+)?)", rows.iloc[0]) if len(rows) else []
    return np.array([float(a) / float(b) for a, b in pairs])


@dataclass
class PairedGain:
    """Accuracy with minus without a change (test-time views), both measured on the same faces."""

    gain: float  # accuracy difference, with - without
    low: float  # its 95% paired-bootstrap interval (faces resampled, both predictions kept together)
    high: float
    faces: int
    only_with: int  # faces right only with the change
    only_without: int  # faces right only without it

    @property
    def tie(self) -> bool:
        return self.low <= 0 <= self.high


def paired_gain(right_without: np.ndarray, right_with: np.ndarray, resamples: int = 2000,
                seed: int = 0) -> PairedGain:
    """:class:`PairedGain` of two per-face correctness vectors on the same faces: a paired percentile bootstrap,
    so that what the two share cancels."""
    from scipy.stats import bootstrap

    right_with, right_without = (np.asarray(v, dtype=np.int8) for v in (right_with, right_without))
    if len(right_with) == 0:
        raise ValueError("no faces to compare")
    diff = right_with - right_without
    low, high = bootstrap((right_with, right_without), lambda a, b, axis=-1: (a - b).mean(axis), paired=True,
                          vectorized=True, n_resamples=resamples, method="percentile", rng=seed).confidence_interval
    return PairedGain(float(diff.mean()), float(low), float(high), len(diff), int((diff > 0).sum()),
                      int((diff < 0).sum()))


def own_copies(images: np.ndarray, labels: np.ndarray, right: np.ndarray) -> dict:
    """A split's exact copies of its own faces (Duplicates.summary's "exact_..." counts) and the accuracy (``right``:
    per-face correctness) on all faces ("accuracy") and with one face of each group kept ("one_each")."""
    from fer_lib.data.duplicates import find_duplicates

    copies, right = find_duplicates(np.asarray(images)), np.asarray(right, float)
    group = copies.exact_group
    return copies.summary(np.asarray(labels)) | {
        "accuracy": right.mean(), "one_each": right[group == np.arange(len(group))].mean()}


@dataclass
class AppendixAnswer:
    """Everything the appendix page shows."""

    recipe: "object"  # recipe_table's table (docs/ablation.csv), None where the file is missing
    clauses_left_out: int  # clauses about the test set left out of it
    speedups: np.ndarray  # bf16 against float32, per input size
    accuracy: "object"  # q2_history.RunAccuracy
    views_gain: PairedGain | None  # the test-time views' gain on the same faces; None without views
    copies: "object"  # q2_history.SplitCopies
    own_copies: dict  # own_copies() of the validation faces, with the shipped predictions (test-time views if any)


def appendix_answer(ctx, ablation) -> AppendixAnswer:
    """The appendix's one call: ``ablation`` is docs/ablation.csv as a DataFrame (or None)."""
    import json

    from fer_lib.core.io import default_cache_dir
    from fer_lib.questions.q2_history import run_accuracy, split_copies

    shown, left_out = recipe_table(ablation) if ablation is not None else (None, 0)
    accuracy, cfg, labels = run_accuracy(json.loads((ctx.run_dir / "run.json").read_text())), ctx.config, ctx.val.labels
    gain = None if accuracy.views == "none" else paired_gain(
        ctx.val_logits.argmax(1).numpy() == labels, ctx.val_logits_views.argmax(1).numpy() == labels, seed=cfg.seed)
    logits = ctx.val_logits if accuracy.views == "none" else ctx.val_logits_views
    return AppendixAnswer(shown, left_out, speedups(ablation) if ablation is not None else np.array([]), accuracy,
                          gain, split_copies(ctx.dataset, ctx.split, cfg.val_fraction, cfg.seed, default_cache_dir()),
                          own_copies(ctx.val.images, labels, logits.argmax(1).numpy() == labels))
