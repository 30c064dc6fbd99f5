"""Reading FER2013 in every supported layout, with errors that name the file and line, and the split.

Layouts, detected from the path given:
  (a) homework CSV: ``train.csv`` (label,feature) and ``test.csv`` (id,feature), ``.csv`` or ``.csv.gz``, with
      an optional ``test_labels.csv`` (id,label); a directory holding them is a dataset, a single file one split;
  (b) the original ``fer2013.csv`` (emotion,pixels,Usage; Training / PublicTest / PrivateTest);
  (c) ``train_img/<id>.jpg`` + ``train.csv`` (id,label), and ``test_img/<id>.jpg``;
  (d) one folder per class: ``train/<class name>/*.jpg`` and ``test/<class name>/*.jpg``.
Every image comes back as uint8 (N, 48, 48); labels are int64 in 0..6, or None for unlabeled test sets.
"""
from __future__ import annotations

import gzip
import json
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_lib import CLASS_NAMES, IMAGE_SIZE
from fer_lib.core.io import IMAGE_SUFFIXES, array_sha256, atomic_savez, default_cache_dir, file_sha256

N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
_CACHE_FORMAT = 2  # bump when the parsed-array layout changes, so old cache entries are ignored
SYNTHETIC_MARKER = "SYNTHETIC.txt"  # a folder holding this file is the embedded demo dataset, whatever its name


class DataError(ValueError):
    """Bad input data; the message names the file, the line or image, and what was expected."""


class DataWarning(UserWarning):
    """Data that loads but deserves attention (converted images, empty classes)."""


@dataclass
class FaceSet:
    """One split of faces."""

    images: np.ndarray  # (N, 48, 48) uint8
    labels: np.ndarray | None  # (N,) int64 in 0..6; None when the split is unlabeled
    ids: np.ndarray  # (N,) int64: the test id, or the row index for training data
    usage: np.ndarray | None = None  # (N,) str: Kaggle's Usage (PublicTest, PrivateTest) where the file says it
    names: np.ndarray | None = None  # (N,) str: the image file (relative to its split folder) where there is one

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> "FaceSet":
        def pick(column):
            return None if column is None else column[index]

        return FaceSet(self.images[index], pick(self.labels), self.ids[index], pick(self.usage), pick(self.names))


@dataclass
class Dataset:
    """A training split, an optional test split, and where they came from."""

    name: str  # used for the report folder: report/<name>/
    layout: str
    train: FaceSet
    test: FaceSet | None = None
    files: list[Path] = field(default_factory=list)  # source files, hashed into provenance
    synthetic: bool = False  # the embedded demo dataset (its folder carries SYNTHETIC.txt)


# ---------------------------------------------------------------------------------------------
# CSV files: pandas reads the table, numpy the pixel strings; a bad row is looked for only once parsing failed


_HOMEWORK = [["label", "feature"], ["id", "feature"]]
_KAGGLE = [["emotion", "pixels", "usage"]]


def _read_table(path: Path, allowed: list[list[str]]):
    """The table of a .csv or .csv.gz file, every cell as text, its columns (lower-cased) one of ``allowed``."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            # a first row with an extra field only warns (and loses data): refuse it as a later one is refused
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False, encoding="utf-8-sig",
                                encoding_errors="replace")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (expected a header line and data rows)") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a valid {'gzip' if path.suffix == '.gz' else 'CSV'} file ({err})") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning):  # a row with too many fields
        table = None
    header = [str(c).strip().lower() for c in (_raw_lines(path)[0][1].split(",") if table is None else table.columns)]
    if header not in allowed:
        closest = max(allowed, key=lambda columns: len(set(columns) & set(header)))
        missing = [c for c in closest if c not in header]
        unknown = sorted(set(header) - set().union(*map(set, allowed)))
        detail = "; ".join(filter(None, [missing and f"missing {missing}", unknown and f"unknown {unknown}"]))
        raise DataError(f"{path}, line 1: columns {','.join(header)} - expected "
                        + " or ".join(",".join(c) for c in allowed) + (f" ({detail})" if detail else ""))
    if table is None:
        raise _bad_row(path, header)
    if table.empty:
        raise DataError(f"{path}: no data rows after the header")
    table.columns = header
    return table


def _raw_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the header and every non-blank line: the failure path's view of the file."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8-sig", errors="replace") as f:
        return [(n, line.rstrip("\r\n")) for n, line in enumerate(f, start=1) if line.strip()]


def _line_of(path: Path, row: int) -> int:
    """The 1-based line of the file holding data row ``row`` (the reader skips blank lines)."""
    return _raw_lines(path)[row + 1][0]


def _bad_row(path: Path, columns: list[str]) -> DataError:
    """The error naming the first bad line of a CSV file (its field count; for key,pixels[,Usage] files also the key
    and pixels) and what is wrong with it."""
    lines = _raw_lines(path)[1:]
    for line_no, line in lines:
        if len(line.split(",")) != len(columns):
            return DataError(f"{path}, line {line_no}: expected {len(columns)} comma-separated fields "
                             f"({','.join(columns)}), found {len(line.split(','))}")
    for line_no, line in lines:
        where, fields = f"{path}, line {line_no}", line.split(",")
        if not fields[0].strip().lstrip("-").isdigit():
            return DataError(f"{where}: {columns[0]} {fields[0].strip()!r} is not an integer")
        tokens = fields[1].split()
        if len(tokens) != N_PIXELS:
            return DataError(f"{where}: expected {N_PIXELS} pixel values (48x48), found {len(tokens)}")
        for i, token in enumerate(tokens):
            if not token.isdigit() or int(token) > 255:
                return DataError(f"{where}: pixel {i} is {token!r}, expected an integer 0-255")
    return DataError(f"{path}: unreadable rows")  # not reached: the reader failed on a row checked above


def _check_labels(path: Path, labels: np.ndarray) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= len(CLASS_NAMES)))
    if bad.size:
        raise DataError(f"{path}, line {_line_of(path, bad[0])}: label {labels[bad[0]]} is outside 0..6 "
                        f"({', '.join(f'{i} {n}' for i, n in enumerate(CLASS_NAMES))})")


def _check_unique_ids(path: Path, ids: np.ndarray) -> None:
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        repeated = ids[first[counts > 1][0]]
        rows = np.flatnonzero(ids == repeated)[:2]
        raise DataError(f"{path}, lines {_line_of(path, rows[0])} and {_line_of(path, rows[1])}: duplicate id "
                        f"{repeated} (ids must be unique)")


def _parse_csv(path: Path, allowed: list[list[str]]) -> dict[str, np.ndarray]:
    """The arrays of a homework CSV (label,feature or id,feature) or of fer2013.csv (emotion,pixels,Usage).

    The pixels are one C parse of all the rows, each followed by -1: every row holds 2,304 values when the -1s
    fall every 2,305th place (a value out of 0..255, -1 included, fails the range check)."""
    table = _read_table(path, allowed)
    key, pixel_column = table.columns[:2]
    try:
        keys = table[key].astype(np.int64).to_numpy()
        values = np.fromstring(" -1 ".join(table[pixel_column]) + " -1", dtype=np.int16, sep=" ")
        values = values.reshape(len(table), N_PIXELS + 1)
    except ValueError:  # a key or a pixel that is not an integer, or a row of another length
        raise _bad_row(path, list(table.columns)) from None
    if (values[:, -1] != -1).any() or (values[:, :-1] < 0).any() or (values[:, :-1] > 255).any():
        raise _bad_row(path, list(table.columns))
    images = values[:, :-1].astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    if key == "id":
        _check_unique_ids(path, keys)
        return {"images": images, "ids": keys}
    _check_labels(path, keys)
    if key == "label":
        return {"images": images, "labels": keys, "ids": np.arange(len(keys), dtype=np.int64)}
    usage = table["usage"].str.strip().to_numpy(dtype=str)
    unknown = np.flatnonzero(~np.isin(usage, ["Training", "PublicTest", "PrivateTest"]))
    if unknown.size:
        raise DataError(f"{path}, line {_line_of(path, unknown[0])}: Usage {str(usage[unknown[0]])!r}, expected "
                        "Training, PublicTest or PrivateTest")
    return {"images": images, "labels": keys, "usage": usage}


def _cached_csv(path: Path, cache_dir: Path | None, allowed: list[list[str]]) -> dict[str, np.ndarray]:
    """:func:`_parse_csv`, from the cache when this content was parsed before (3 s -> 0.2 s for the real
    train.csv.gz, which every page of a report loads)."""
    if cache_dir is None:
        return _parse_csv(path, allowed)
    entry = Path(cache_dir) / f"{file_sha256(path)}-v{_CACHE_FORMAT}.npz"
    if entry.exists():
        with np.load(entry) as npz:
            return {k: npz[k] for k in npz.files}
    arrays = _parse_csv(path, allowed)
    atomic_savez(entry, **arrays)
    return arrays


def warn_empty_classes(source: str, labels: np.ndarray) -> None:
    empty = [CLASS_NAMES[i] for i in np.flatnonzero(np.bincount(labels, minlength=len(CLASS_NAMES)) == 0)]
    if empty:
        warnings.warn(f"{source}: no training examples of {', '.join(empty)}; the model cannot learn "
                      "these classes", DataWarning, stacklevel=3)


def read_homework_csv(path: Path, cache_dir: Path | None = None) -> FaceSet:
    """One homework CSV file: ``label,feature`` (training) or ``id,feature`` (unlabeled test)."""
    arrays = _cached_csv(Path(path), cache_dir, _HOMEWORK)
    faces = FaceSet(arrays["images"], arrays.get("labels"), arrays["ids"])
    if faces.labels is not None:
        warn_empty_classes(str(path), faces.labels)
    return faces


def read_fer2013_csv(path: Path, cache_dir: Path | None = None) -> tuple[FaceSet, FaceSet]:
    """The original Kaggle file: Training is the train split; PublicTest + PrivateTest the (labeled) test, each face
    with its Usage. Ids are the row numbers of the file (0 = its first face)."""
    arrays = _cached_csv(Path(path), cache_dir, _KAGGLE)
    ids = np.arange(len(arrays["labels"]), dtype=np.int64)
    everything = FaceSet(arrays["images"], arrays["labels"], ids, arrays["usage"].astype(str))
    is_train = everything.usage == "Training"
    train, test = everything.subset(is_train), everything.subset(~is_train)
    train.usage = None  # the training split is all "Training"
    warn_empty_classes(str(path), train.labels)
    return train, test


def _read_id_labels(label_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) from an ``id,label`` file; ids may be integers (42, 00042) or image names (00042.jpg)."""
    table = _read_table(label_file, [["id", "label"]])
    ids = table["id"].map(_id_from_stem)
    for column, bad, what in (("id", ids.isna(), "neither an integer nor an image name like 00042.jpg"),
                              ("label", ~table["label"].str.strip().str.isdigit(), "not an integer 0-6")):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{label_file}, line {_line_of(label_file, row)}: {column} "
                            f"{table[column].iloc[row].strip()!r} is {what}")
    ids, labels = ids.to_numpy(dtype=np.int64), table["label"].astype(np.int64).to_numpy()
    _check_labels(label_file, labels)
    _check_unique_ids(label_file, ids)
    return ids, labels


# ---------------------------------------------------------------------------------------------
# image files


def read_face_image(path: Path) -> np.ndarray:
    """A 48x48 uint8 face from an image file; colour or larger images are converted with a warning."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            converted = []
            if img.mode != "L":
                converted.append(f"{img.mode} to grayscale")
                img = img.convert("L")
            if img.size != (IMAGE_SIZE, IMAGE_SIZE):
                if min(img.size) < IMAGE_SIZE:
                    raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]}, expected 48x48 grayscale "
                                    "(smaller images are refused: upscaling invents detail)")
                converted.append(f"{img.size[0]}x{img.size[1]} resized to 48x48")
                img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: not a readable image ({err.__class__.__name__}: {err})") from None
    if converted:
        warnings.warn(f"{path}: converted ({'; '.join(converted)}); expected 48x48 grayscale",
                      DataWarning, stacklevel=2)
    return pixels


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_images(paths: list[Path]) -> np.ndarray:
    from tqdm import tqdm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        images = [read_face_image(p) for p in tqdm(paths, desc="reading images", leave=False,
                                                   disable=len(paths) < 2000 or not sys.stderr.isatty())]
    if caught:  # one summary instead of thousands of lines
        warnings.warn(f"{len(caught)} image(s) converted to 48x48 grayscale, e.g. {caught[0].message}",
                      DataWarning, stacklevel=3)
    return np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)


def _id_from_stem(text: str) -> int | None:
    """The integer id of a face from its image name or id text: "00042.jpg", "00042" and "42" all give 42."""
    stem = text.strip()
    if Path(stem).suffix.lower() in IMAGE_SUFFIXES:
        stem = Path(stem).stem
    return int(stem) if stem.isdigit() else None


def _images_by_id(folder: Path) -> dict[int, Path]:
    """{integer id: image file} for ``folder``, whatever the zero padding of the names (00000.jpg, 0000.jpg, 0.jpg)."""
    by_id: dict[int, Path] = {}
    for path in _image_files(folder):
        face_id = _id_from_stem(path.name)
        if face_id is None:
            raise DataError(f"{path}: image name should be the face id (digits, any zero padding), e.g. 00042.jpg")
        if face_id in by_id:
            raise DataError(f"{path} and {by_id[face_id]}: two images for id {face_id}")
        by_id[face_id] = path
    return by_id


def read_image_id_layout(root: Path) -> tuple[FaceSet, FaceSet | None, list[Path]]:
    """Layout (c), the course's own: ``train.csv`` (id,label) naming ``train_img/<id>.jpg``; ``test_img/<id>.jpg``.

    The course pads names with zeros (train_img/00000.jpg, test_img/0000.jpg) and writes plain integer ids
    in train.csv; ids and names are matched by their integer value, so any padding (or none) works.
    """
    label_file = first_existing(root, "train.csv", "train.csv.gz") or root / "train.csv"
    ids, labels = _read_id_labels(label_file)
    images = _images_by_id(root / "train_img")
    missing = [i for i, face_id in enumerate(ids.tolist()) if face_id not in images]
    if missing:
        face_id = ids[missing[0]]
        raise DataError(f"{label_file}, line {_line_of(label_file, missing[0])}: no image for id {face_id} in "
                        f"{root / 'train_img'} (looked for {face_id}.jpg with any zero padding, "
                        f"e.g. {face_id:05d}.jpg)")
    train = FaceSet(_read_images([images[i] for i in ids.tolist()]), labels, ids)
    warn_empty_classes(str(label_file), labels)
    test = None
    if (root / "test_img").is_dir():
        test_images = _images_by_id(root / "test_img")
        test_ids = np.array(sorted(test_images), dtype=np.int64)
        test = FaceSet(_read_images([test_images[i] for i in test_ids]), None, test_ids)
    return train, test, [label_file]


def _read_class_folders(split_dir: Path) -> FaceSet:
    classes = {**{n.lower(): i for i, n in enumerate(CLASS_NAMES)}, **{str(i): i for i in range(len(CLASS_NAMES))}}
    paths, labels = [], []
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if folder.name.lower() not in classes:
            raise DataError(f"{folder}: unknown class folder {folder.name!r}; expected one of "
                            f"{', '.join(CLASS_NAMES)} (or 0-6)")
        files = _image_files(folder)
        paths += files
        labels += [classes[folder.name.lower()]] * len(files)
    if not paths:
        raise DataError(f"{split_dir}: no images found in its class folders")
    names = np.array([p.relative_to(split_dir).as_posix() for p in paths])
    return FaceSet(_read_images(paths), np.array(labels, dtype=np.int64), np.arange(len(paths), dtype=np.int64),
                   names=names)


def read_class_folder_layout(root: Path) -> tuple[FaceSet, FaceSet | None]:
    """Layout (d): train/<class>/*.jpg and optionally test/<class>/*.jpg (labeled)."""
    train = _read_class_folders(root / "train")
    warn_empty_classes(str(root / "train"), train.labels)
    return train, _read_class_folders(root / "test") if (root / "test").is_dir() else None


# ---------------------------------------------------------------------------------------------
# detection and loading


def first_existing(root: Path, *names: str) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _is_fer2013_csv(path: Path) -> bool:
    """Whether a CSV file starts with the original Kaggle header; reads the first line only."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            first = f.readline(4096)
    except (OSError, EOFError):
        return False  # the full reader reports what is wrong with the file
    return first.decode("utf-8", "replace").lstrip("\ufeff").strip().lower().startswith("emotion,pixels")


def detect_layout(path: Path) -> str | None:
    """The layout of a dataset folder or file ("image-ids", "homework-csv", "fer2013.csv", "class-folders"),
    or None when ``path`` holds none of them. The one place that decides what a folder is."""
    path = Path(path)
    if path.is_file():
        return "fer2013.csv" if _is_fer2013_csv(path) else "homework-csv"
    if not path.is_dir():
        return None
    if (path / "train_img").is_dir():
        return "image-ids"
    if first_existing(path, "train.csv", "train.csv.gz"):
        return "homework-csv"
    if first_existing(path, "fer2013.csv", "fer2013.csv.gz"):
        return "fer2013.csv"
    return "class-folders" if (path / "train").is_dir() else None


def is_synthetic(path: Path) -> bool:
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    return (folder / SYNTHETIC_MARKER).is_file()


def load_dataset(path: str | Path, cache_dir: Path | None = None, name: str | None = None) -> Dataset:
    """Load a dataset from a directory or file, detecting its layout (see the module docstring).

    The embedded synthetic dataset (marked by SYNTHETIC.txt beside its files) is always named "synthetic".
    """
    path = Path(path)
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    layout, synthetic = detect_layout(path), is_synthetic(path)
    name = "synthetic" if synthetic else name or (path.name.split(".")[0] if path.is_file() else path.resolve().name)
    test, label_file = None, None
    if layout == "fer2013.csv":
        files = [path if path.is_file() else first_existing(path, "fer2013.csv", "fer2013.csv.gz")]
        train, test = read_fer2013_csv(files[0], cache_dir)
    elif layout == "homework-csv" and path.is_file():
        files, train = [path], read_homework_csv(path, cache_dir)
    elif layout == "homework-csv":
        files = [first_existing(path, "train.csv", "train.csv.gz"), first_existing(path, "test.csv", "test.csv.gz")]
        train = read_homework_csv(files[0], cache_dir)
        if train.labels is None:
            raise DataError(f"{files[0]}: a training file needs a label column (label,feature), found id,feature")
        if files[1]:
            test = read_homework_csv(files[1], cache_dir)
            label_file = first_existing(path, "test_labels.csv", "test_labels.csv.gz")
        if label_file:  # the test labels, where they are not hidden (the synthetic demo writes them)
            by_id = dict(zip(*(a.tolist() for a in _read_id_labels(label_file))))
            missing = [i for i in test.ids.tolist() if i not in by_id]
            if missing:
                raise DataError(f"{label_file}: no label for test id {missing[0]} ({len(missing)} test id(s) "
                                "without one)")
            test.labels = np.array([by_id[i] for i in test.ids.tolist()], dtype=np.int64)
        files = [p for p in (*files, label_file) if p]
    elif layout == "image-ids":
        train, test, files = read_image_id_layout(path)
    elif layout == "class-folders":
        (train, test), files = read_class_folder_layout(path), []
    else:
        raise DataError(f"{path}: no dataset found. Expected one of: train.csv[.gz] (+ test.csv[.gz]); "
                        "fer2013.csv[.gz]; train_img/ + train.csv; train/<class name>/*.jpg")
    return Dataset(name, layout, train, test, files, synthetic)


def load_test_faces(path: str | Path, cache_dir: Path | None = None) -> FaceSet:
    """The faces to predict: a test CSV file, or the test split of a dataset directory."""
    path = Path(path)
    if path.is_file() and not _is_fer2013_csv(path):
        return read_homework_csv(path, default_cache_dir() if cache_dir is None else cache_dir)
    dataset = load_dataset(path, cache_dir)
    if dataset.test is None:
        raise DataError(f"{path}: has no test split to predict")
    return dataset.test


# ---------------------------------------------------------------------------------------------
# split


_SPLIT_FORMAT = 1  # bump when the split's algorithm changes: cached splits are then recomputed


def train_val_split(faces: FaceSet, val_fraction: float = 0.1, seed: int = 0, groups: np.ndarray | None = None,
                    cache_dir: Path | None = None) -> tuple[FaceSet, FaceSet]:
    """Deterministic split stratified by class: every class keeps its share in both parts.

    ``groups`` (one id per face, e.g. copies of the same photo) keeps every group on one side, so no
    validation face has a copy in the training part. The split depends only on the labels, the groups, the
    fraction and the seed; with ``cache_dir`` it is stored there under a hash of those.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if groups is not None and len(groups) != len(faces):
        raise DataError(f"{len(groups)} group ids for {len(faces)} faces")
    entry = None
    if cache_dir is not None:
        settings = np.frombuffer(json.dumps([val_fraction, seed, _SPLIT_FORMAT]).encode(), dtype=np.uint8)
        parts = [faces.labels.astype(np.int64), np.asarray([] if groups is None else groups, dtype=np.int64)]
        entry = Path(cache_dir) / f"split-{array_sha256(*parts, settings)[:16]}.npz"
        if entry.exists():
            with np.load(entry) as z:
                return faces.subset(z["train"]), faces.subset(z["val"])
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

    labels, index = faces.labels, np.arange(len(faces))
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    n_folds = max(2, round(1 / val_fraction))
    fits = len(labels) * val_fraction >= (counts > 0).sum()  # room in validation for every class present
    # stratification needs enough examples of every class; tiny sets fall back to a seeded plain split
    if groups is not None and counts[counts > 0].min() >= n_folds and fits:
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        train_idx, val_idx = next(folds.split(index, labels, groups))
    elif groups is not None:
        folds = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        train_idx, val_idx = next(folds.split(index, labels, groups))
    else:
        stratify = labels if counts[counts > 0].min() >= 2 and fits else None
        train_idx, val_idx = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=stratify)
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    if entry is not None:
        atomic_savez(entry, train=train_idx, val=val_idx)
    return faces.subset(train_idx), faces.subset(val_idx)
