"""FER+ crowd votes (10 annotators per training face): reading and checking the file, and the evidence they give
about the model's errors. Votes are outside evidence only: they never become training targets.

The FER+ file (Barsoum et al. 2016) has one row per face of the training file, in the same order, with annotator
counts in the columns FERPLUS_COLUMNS (mapped to CLASS_NAMES by name). Contempt, unknown and NF (not a face) are
kept as three extra columns, so a face keeps all its annotators (3 of 10 means 3 of 10, whatever the others chose).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_lib import CLASS_NAMES
from fer_lib.core.stats import proportions_tie, wilson_interval
from fer_lib.data.layouts import DataError, Dataset, FaceSet

# the FER+ columns in CLASS_NAMES order, then the three outside the 7 classes
FERPLUS_COLUMNS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral", "contempt", "unknown",
                   "NF")
MIN_VOTES = 3  # "at least 3 of 10 annotators chose it": a minority view too common to be a slip


class VotesError(DataError):
    """A votes file that cannot be read or does not line up with the training file."""


def read_votes(path: str | Path, expected_rows: int | None = None, train_file: str | Path | None = None) -> np.ndarray:
    """(N, 10) annotator counts in FERPLUS_COLUMNS order from a FER+ votes file; errors name the file, the line
    and what was expected."""
    import pandas as pd

    path = Path(path)
    try:
        with warnings.catch_warnings():  # a first row longer than the header: an error, not a silent cut
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, index_col=False,
                                encoding="utf-8-sig")
    except pd.errors.EmptyDataError as e:
        raise VotesError(f"{path}: empty file, expected a header with the FER+ vote columns") from e
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.ParserWarning) as e:
        raise VotesError(f"{path}: cannot read the votes file ({e})") from e
    by_name = {str(c).strip().lower(): c for c in table.columns}
    missing = [w for w in FERPLUS_COLUMNS if w.lower() not in by_name]
    if missing:
        raise VotesError(f"{path}, line 1: missing vote column(s) {', '.join(missing)}; expected the FER+ columns "
                         f"{', '.join(FERPLUS_COLUMNS)}")
    table = table.apply(lambda column: column.str.strip())
    blank = (table == "").all(axis=1).to_numpy()
    rows = len(blank) - int(np.argmax(~blank[::-1])) if (~blank).any() else 0  # trailing blank lines are fine
    if blank[:rows].any():  # a gap would shift every row after it
        raise VotesError(f"{path}, line {int(np.argmax(blank)) + 2}: blank line inside the file; every row must "
                         "match one face of the training file, in order")
    votes = table[[by_name[w.lower()] for w in FERPLUS_COLUMNS]].iloc[:rows]
    bad = np.argwhere(~votes.apply(lambda column: column.str.fullmatch(r"\d+")).to_numpy())
    if len(bad):
        line, col = bad[0]
        raise VotesError(f"{path}, line {line + 2}: column {votes.columns[col]!r} is {votes.iat[line, col]!r}, "
                         "expected a whole number of votes (0 or more)")
    if expected_rows is not None and rows != expected_rows:
        raise VotesError(f"{path}: {rows} rows of votes, but {train_file or 'the training data'} has "
                         f"{expected_rows} faces; the rows must match the training file's one to one, in order")
    return votes.to_numpy(dtype=np.int16)


def load_votes(dataset: Dataset) -> np.ndarray | None:
    """The dataset's FER+ votes, checked against its training file, or None when it has none.

    Looked for next to the training file: ``<its stem>_ferplus.csv[.gz]`` and, beside the original fer2013.csv,
    FER+'s own ``fer2013new.csv``. Only layouts whose face ids are row indices of one file can line up with it.
    """
    if dataset.layout not in ("homework-csv", "fer2013.csv") or not dataset.files:
        return None
    train_file = Path(dataset.files[0])
    names = [f"{train_file.name.split('.')[0]}_ferplus.csv"] + ["fer2013new.csv"] * (dataset.layout == "fer2013.csv")
    path = next((train_file.parent / (n + gz) for n in names for gz in ("", ".gz")
                 if (train_file.parent / (n + gz)).is_file()), None)
    fer2013_test = dataset.layout == "fer2013.csv" and dataset.test is not None  # ids index all of fer2013.csv
    rows = len(dataset.train) + (len(dataset.test) if fer2013_test else 0)
    return None if path is None else read_votes(path, rows, train_file)


def _shares(hits, of, index):
    """Shares hits / of with their 95% Wilson intervals, one row per name in ``index``."""
    import pandas as pd

    hits, of = np.asarray(hits, dtype=int), np.asarray(of, dtype=int)
    low, high = wilson_interval(hits, of)
    return pd.DataFrame({"faces": of, "share": hits / np.maximum(of, 1), "low": low, "high": high}, index=index)


@dataclass
class CrowdEvidence:
    """What the FER+ crowd says about one set of faces (the validation split) and the model's answers on them."""

    votes: np.ndarray  # (N, 10) votes of those faces, in FERPLUS_COLUMNS order
    annotators: int  # per face (the typical row total; FER+ has 10)
    summary: "object"  # DataFrame, one share per row (faces, share, low, high): see crowd_evidence
    agreement: "object"  # DataFrame per class: how often the FER2013 label is the crowd's most-voted class
    pairs: "object"  # DataFrame per confused pair asked for: the crowd's support among its errors and correct faces
    majority: np.ndarray  # (N,) the crowd majority's class (more than half of all the annotators), -1 where none

    def pair(self, true: str, predicted: str):
        """The row of ``pairs`` for true -> predicted."""
        return self.pairs[(self.pairs["true"] == true) & (self.pairs["predicted"] == predicted)].iloc[0]


def crowd_evidence(votes: np.ndarray | None, faces: FaceSet, y_pred: np.ndarray, pairs: list[tuple[str, str]],
                   min_votes: int = MIN_VOTES) -> CrowdEvidence | None:
    """The crowd evidence for ``faces`` (whose ``ids`` are rows of ``votes``, load_votes's) and the model's
    ``y_pred``; None when the dataset has no votes.

    ``summary`` rows: the label is (one of) the crowd's most-voted of the 7 classes; on the faces with a crowd
    majority (more than half of all the annotators on one class), the label is it, the model's answer is it, is the
    label; errors on which at least ``min_votes`` annotators chose the model's answer; correct faces on which at
    least ``min_votes`` chose one other class. A pair is ``clearly_more`` when the crowd backs the prediction more
    often on its errors than on the true class's correct faces, beyond noise (a two-proportion z-test at 5%).
    """
    import pandas as pd

    if votes is None:
        return None
    v, y_true, y_pred = votes[faces.ids], np.asarray(faces.labels), np.asarray(y_pred)
    seven, rows = v[:, :len(CLASS_NAMES)], np.arange(len(v))
    top, top_class = seven.max(1), seven.argmax(1)
    agrees = (seven[rows, y_true] == top) & (top > 0)
    majority = top > 0.5 * v.sum(1)
    wrong = y_true != y_pred
    others = seven.copy()
    others[rows, y_true] = 0
    masks = [(agrees, True), (majority & (top_class == y_true), majority), (majority & (top_class == y_pred), majority),
             (majority & ~wrong, majority), (wrong & (seven[rows, y_pred] >= min_votes), wrong),
             (~wrong & (others.max(1) >= min_votes), ~wrong)]
    summary = _shares([np.sum(k & of) for k, of in masks], [np.sum(np.broadcast_to(of, rows.shape)) for _, of in masks],
                      ["label is the top class", "label is the majority", "model is the majority", "model is the label",
                       "errors backed", "correct split"])
    agreement = _shares([np.sum(agrees & (y_true == c)) for c in range(len(CLASS_NAMES))],
                        np.bincount(y_true, minlength=len(CLASS_NAMES)), list(CLASS_NAMES))
    table = []
    for true, predicted in pairs:
        t, p = CLASS_NAMES.index(true), CLASS_NAMES.index(predicted)
        backed = seven[:, p] >= min_votes
        errors, correct = (y_true == t) & (y_pred == p), (y_true == t) & (y_pred == t)
        k, n = [int(np.sum(errors & backed)), int(np.sum(correct & backed))], [int(errors.sum()), int(correct.sum())]
        shares = _shares(k, n, ["errors", "correct"])
        row = {"true": true, "predicted": predicted}
        for kind in ("errors", "correct"):
            row |= {kind: n[kind == "correct"], f"{kind}_backed": shares.at[kind, "share"],
                    f"{kind}_low": shares.at[kind, "low"], f"{kind}_high": shares.at[kind, "high"]}
        row["clearly_more"] = bool(all(n) and k[0] / n[0] > k[1] / n[1] and not proportions_tie(k[0], n[0], k[1], n[1]))
        table.append(row)
    return CrowdEvidence(v, int(np.median(v.sum(1))) if len(v) else 0, summary, agreement, pd.DataFrame(table),
                         np.where(majority, top_class, -1))
