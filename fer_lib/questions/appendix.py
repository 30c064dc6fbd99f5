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


def speedups(table, choice: str = "precision (speed)"):
    """The speed ratios measured in the first row of ``choice``: each "A vs B" of its result (the chosen setting's
    images per second against the alternative's) as A / B. Empty when the table has no such row."""
    import numpy as np

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
    """:class:`PairedGain` of two per-face correctness vectors on the same faces: a percentile bootstrap of the
    difference that resamples faces, so that what the two share (most faces are right or wrong under both) cancels."""
    diff = np.asarray(right_with, dtype=np.int8) - np.asarray(right_without, dtype=np.int8)
    n = len(diff)
    if n == 0:
        raise ValueError("no faces to compare")
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, n, n)].mean() for _ in range(resamples)])
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedGain(float(diff.mean()), float(low), float(high), n, int((diff > 0).sum()), int((diff < 0).sum()))
