"""Appendix: the recipe's measurements (docs/ablation.csv) as a table."""
from __future__ import annotations

import re

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
