"""FER+ crowd votes (10 annotators per training face): finding, reading and checking the file, and the evidence
they give about the model's errors. Votes are outside evidence only: they never become training targets.

The FER+ file (Barsoum et al. 2016) has one row per face of the training file, in the same order, with the
columns ``neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF`` (annotator counts;
``Usage`` and ``Image name`` may precede them). The 7 shared categories are mapped to CLASS_NAMES by name;
contempt, unknown and NF (not a face) match none of the 7 classes and are kept as three extra columns, so a face
keeps all its annotators (3 of 10 means 3 of 10, whatever the other 7 chose).
"""
from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_lib import CLASS_NAMES
from fer_lib.core.stats import proportions_tie, wilson_interval
from fer_lib.data.layouts import DataError, Dataset, FaceSet

# FER+ column for each of the 7 classes, by name
FERPLUS_COLUMNS = {"Angry": "anger", "Disgust": "disgust", "Fear": "fear", "Happy": "happiness", "Sad": "sadness",
                   "Surprise": "surprise", "Neutral": "neutral"}
EXTRA_COLUMNS = ("contempt", "unknown", "NF")  # FER+ categories outside the 7 classes
VOTE_NAMES = CLASS_NAMES + ("contempt", "unknown", "not a face")  # the columns of Votes.counts, in order
MIN_VOTES = 3  # "at least 3 of 10 annotators chose it": a minority view too common to be a slip
MAJORITY = 0.5  # a face has a crowd majority label when more than this share of its annotators chose one class


class VotesError(DataError):
    """A votes file that cannot be read or does not line up with the training file."""


@dataclass
class Votes:
    counts: np.ndarray  # (N, 10) int: annotators per category in VOTE_NAMES order, one row per training-file row
    file: Path

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, index) -> np.ndarray:
        """Votes of the given training-file rows (a FaceSet's ``ids``): ``votes[ctx.val.ids]``, (n, 10)."""
        return self.counts[index]

    @property
    def annotators(self) -> int:
        """Annotators per face (the typical row total; FER+ has 10)."""
        return int(np.median(self.counts.sum(1))) if len(self.counts) else 0


def votes_file_for(dataset: Dataset) -> Path | None:
    """The FER+ votes file next to the dataset's training file, or None.

    Looked for: ``<train file stem>_ferplus.csv[.gz]`` (e.g. train_ferplus.csv.gz beside train.csv.gz) and, for
    the original fer2013.csv, FER+'s own name ``fer2013new.csv``. Only layouts whose face ids are row indices of
    one file (homework CSV, fer2013.csv) can line up with it.
    """
    if dataset.layout not in ("homework-csv", "fer2013.csv") or not dataset.files:
        return None
    train_file = Path(dataset.files[0])
    stem = train_file.name.split(".")[0]
    names = [f"{stem}_ferplus.csv", f"{stem}_ferplus.csv.gz"]
    if dataset.layout == "fer2013.csv":
        names += ["fer2013new.csv", "fer2013new.csv.gz"]
    return next((train_file.parent / n for n in names if (train_file.parent / n).is_file()), None)


def _rows_expected(dataset: Dataset) -> int:
    """Rows of the file the training ids index: the training file, or all of fer2013.csv."""
    if dataset.layout == "fer2013.csv" and dataset.test is not None:
        return len(dataset.train) + len(dataset.test)
    return len(dataset.train)


def read_votes(path: str | Path, expected_rows: int | None = None, train_file: str | Path | None = None) -> Votes:
    """Parse a FER+ votes file; errors name the file, the line and what was expected."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise VotesError(f"{path}: cannot read the votes file ({e})") from e
    reader = csv.reader(io.StringIO(raw.decode("utf-8-sig", "replace")))
    header = next(reader, None)
    if not header:
        raise VotesError(f"{path}: empty file, expected a header with the FER+ vote columns")
    lower = [h.strip().lower() for h in header]
    wanted = [FERPLUS_COLUMNS[c] for c in CLASS_NAMES] + list(EXTRA_COLUMNS)
    missing = [w for w in wanted if w.lower() not in lower]
    if missing:
        raise VotesError(f"{path}, line 1: missing vote column(s) {', '.join(missing)}; expected the FER+ columns "
                         f"{', '.join(wanted)}")
    cols = [lower.index(w.lower()) for w in wanted]
    rows: list[list[int]] = []
    blank_at = None
    for line_no, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            blank_at = blank_at or line_no  # trailing blank lines are fine, a gap would shift every row after it
            continue
        if blank_at is not None:
            raise VotesError(f"{path}, line {blank_at}: blank line inside the file; every row must match one face "
                             "of the training file, in order")
        if len(fields) != len(header):
            raise VotesError(f"{path}, line {line_no}: {len(fields)} fields, expected {len(header)} "
                             f"({','.join(header)})")
        row = []
        for c in cols:
            value = fields[c].strip()
            if not value.isdigit():
                raise VotesError(f"{path}, line {line_no}: column {header[c]!r} is {value!r}, expected a whole "
                                 "number of votes (0 or more)")
            row.append(int(value))
        rows.append(row)
    counts = np.array(rows, dtype=np.int16).reshape(-1, len(wanted))
    if expected_rows is not None and len(counts) != expected_rows:
        against = f"{train_file} has" if train_file else "the training data has"
        raise VotesError(f"{path}: {len(counts)} rows of votes, but {against} {expected_rows} faces; the rows must "
                         "match the training file's one to one, in order")
    return Votes(counts, path)


def load_votes(dataset: Dataset) -> Votes | None:
    """The dataset's FER+ votes, checked against its training file, or None when it has none."""
    path = votes_file_for(dataset)
    if path is None:
        return None
    return read_votes(path, _rows_expected(dataset), dataset.files[0])


# --------------------------------------------------------------------------------------------- evidence


def _share(k: int, n: int) -> float:
    return k / n if n else float("nan")


def _interval(k, n) -> tuple[float, float]:
    low, high = wilson_interval(k, n)
    return float(low), float(high)


@dataclass
class PairEvidence:
    """For faces of class ``true`` predicted as ``predicted``: how often the crowd also saw ``predicted``."""

    true: str
    predicted: str
    errors: int  # validation faces of `true` predicted as `predicted`
    errors_backed: int  # ... on which at least `min_votes` annotators chose `predicted`
    correct: int  # correctly classified faces of `true`
    correct_backed: int  # ... on which at least `min_votes` annotators chose `predicted` all the same
    min_votes: int = MIN_VOTES
    annotators: int = 10

    @property
    def share_errors(self) -> float:
        return _share(self.errors_backed, self.errors)

    @property
    def share_correct(self) -> float:
        return _share(self.correct_backed, self.correct)

    @property
    def clearly_more(self) -> bool:
        """Whether the crowd backs the error more often than it doubts correct answers, beyond noise (a
        two-proportion z-test at 5%)."""
        if not self.errors or not self.correct:
            return False
        return self.share_errors > self.share_correct and not proportions_tie(
            self.errors_backed, self.errors, self.correct_backed, self.correct)


def pair_evidence(votes: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, true: str, predicted: str,
                  min_votes: int = MIN_VOTES, annotators: int = 10) -> PairEvidence:
    """``votes``: (N, 10) votes of the same N faces as ``y_true``/``y_pred`` (e.g. ``votes[ctx.val.ids]``)."""
    t, p = CLASS_NAMES.index(true), CLASS_NAMES.index(predicted)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    backed = np.asarray(votes)[:, p] >= min_votes
    wrong = (y_true == t) & (y_pred == p)
    right = (y_true == t) & (y_pred == t)
    return PairEvidence(true, predicted, int(wrong.sum()), int((wrong & backed).sum()), int(right.sum()),
                        int((right & backed).sum()), min_votes, annotators)


def crowd_pairs_table(evidence: list[PairEvidence]):
    """One row per confused pair: the crowd's support among the errors and among the correct faces, with 95%
    Wilson intervals (``_low``/``_high``) and ``clearly_more``."""
    import pandas as pd

    rows = []
    for e in evidence:
        (el, eh), (cl, ch) = _interval(e.errors_backed, e.errors), _interval(e.correct_backed, e.correct)
        rows.append({"true": e.true, "predicted": e.predicted, "errors": e.errors, "errors_backed": e.share_errors,
                     "errors_backed_low": el, "errors_backed_high": eh, "correct": e.correct,
                     "correct_backed": e.share_correct, "correct_backed_low": cl, "correct_backed_high": ch,
                     "clearly_more": e.clearly_more})
    return pd.DataFrame(rows)


@dataclass
class CrowdSummary:
    """How the crowd relates to the labels and to all of the model's errors on a set of faces."""

    faces: np.ndarray  # (7,) faces per (FER2013) class
    plurality_agrees: np.ndarray  # (7,) faces whose label is (one of) the crowd's most-voted of the 7 classes
    errors: int
    errors_backed: int  # errors on which at least `min_votes` annotators chose the model's answer
    correct: int
    correct_split: int  # correct faces on which at least `min_votes` annotators chose one other class
    majority_faces: int  # faces on which more than half of the annotators chose one of the 7 classes
    majority_label_agrees: int  # ... whose FER2013 label is that majority class
    majority_model_agrees: int  # ... on which the model predicts that majority class
    min_votes: int = MIN_VOTES
    annotators: int = 10

    def agreement_table(self):
        """Per class: faces, and the share whose FER2013 label is the crowd's most-voted class (95% interval)."""
        import pandas as pd

        low, high = wilson_interval(self.plurality_agrees, self.faces)
        return pd.DataFrame({"faces": self.faces, "agreement": self.plurality_agrees / np.maximum(self.faces, 1),
                             "low": low, "high": high}, index=list(CLASS_NAMES))

    @property
    def agreement(self) -> float:
        """Share of the faces whose FER2013 label is (one of) the crowd's most-voted of the 7 classes."""
        return _share(int(self.plurality_agrees.sum()), int(self.faces.sum()))

    @property
    def agreement_interval(self) -> tuple[float, float]:
        return _interval(int(self.plurality_agrees.sum()), int(self.faces.sum()))

    @property
    def majority_label_share(self) -> float:
        """On the faces with a crowd majority: how often the FER2013 label is that majority (label sets agree)."""
        return _share(self.majority_label_agrees, self.majority_faces)

    @property
    def majority_label_interval(self) -> tuple[float, float]:
        return _interval(self.majority_label_agrees, self.majority_faces)

    @property
    def majority_accuracy(self) -> float:
        """The model's accuracy against the crowd's majority label, on the faces that have one."""
        return _share(self.majority_model_agrees, self.majority_faces)

    @property
    def majority_accuracy_interval(self) -> tuple[float, float]:
        return _interval(self.majority_model_agrees, self.majority_faces)

    @property
    def errors_backed_share(self) -> float:
        return _share(self.errors_backed, self.errors)

    @property
    def correct_split_share(self) -> float:
        return _share(self.correct_split, self.correct)


def crowd_summary(votes: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, min_votes: int = MIN_VOTES,
                  annotators: int = 10) -> CrowdSummary:
    """``votes``: (N, 10) votes of the same faces as ``y_true``/``y_pred``."""
    votes, y_true, y_pred = np.asarray(votes), np.asarray(y_true), np.asarray(y_pred)
    n_classes = len(CLASS_NAMES)
    seven = votes[:, :n_classes]
    rows = np.arange(len(y_true))
    agrees = (seven[rows, y_true] == seven.max(1)) & (seven.max(1) > 0)
    wrong = y_true != y_pred
    backed = seven[rows, y_pred] >= min_votes
    others = seven.copy()
    others[rows, y_true] = 0
    split = others.max(1) >= min_votes
    majority = seven.max(1) > MAJORITY * votes.sum(1)  # more than half of all its annotators: at most one class
    top = seven.argmax(1)
    return CrowdSummary(np.bincount(y_true, minlength=n_classes), np.bincount(y_true[agrees], minlength=n_classes),
                        int(wrong.sum()), int((wrong & backed).sum()), int((~wrong).sum()),
                        int((~wrong & split).sum()), int(majority.sum()), int((majority & (top == y_true)).sum()),
                        int((majority & (top == y_pred)).sum()), min_votes, annotators)


@dataclass
class CrowdEvidence:
    """Everything Q3 shows from the votes, for one set of faces (the validation split)."""

    votes: np.ndarray  # (N, 10) votes of those faces, in VOTE_NAMES order
    summary: CrowdSummary
    pairs: list[PairEvidence]  # one per confused pair asked for
    source: str  # the votes file's name

    def pair(self, true: str, predicted: str) -> PairEvidence | None:
        return next((e for e in self.pairs if (e.true, e.predicted) == (true, predicted)), None)


def crowd_evidence(votes: Votes | None, faces: FaceSet, y_pred: np.ndarray, pairs: list[tuple[str, str]],
                   min_votes: int = MIN_VOTES) -> CrowdEvidence | None:
    """The crowd evidence for ``faces`` (whose ``ids`` are training-file rows) and the model's ``y_pred``;
    None when the dataset has no votes."""
    if votes is None:
        return None
    v = votes[faces.ids]
    n = votes.annotators
    return CrowdEvidence(v, crowd_summary(v, faces.labels, y_pred, min_votes, n),
                         [pair_evidence(v, faces.labels, y_pred, t, p, min_votes, n) for t, p in pairs],
                         votes.file.name)
