"""Reading FER2013 in every supported layout, with errors that name the file and line, and the split.

Layouts, detected from the path given: (a) homework CSV, train.csv (label,feature) and test.csv (id,feature), .csv or
.csv.gz, with an optional test_labels.csv (id,label), a folder or a single file; (b) the original fer2013.csv
(emotion,pixels,Usage); (c) train_img/<id>.jpg + train.csv (id,label), and test_img/<id>.jpg; (d) one folder per
class, train/<class name>/*.jpg and test/<class name>/*.jpg. Every image comes back as uint8 (N, 48, 48); labels are
int64 in 0..6, or None for unlabeled test sets.
"""
from __future__ import annotations

import gzip
import json
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_lib import CLASS_NAMES, IMAGE_SIZE
from fer_lib.core.io import IMAGE_SUFFIXES, array_sha256, atomic_savez, default_cache_dir, file_sha256
from fer_lib.data.synthetic import SYNTHETIC_MARKER

N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
_CACHE_FORMAT = 2  # bump when the parsed-array layout changes, so old cache entries are ignored
_SPLIT_FORMAT = 2  # bump when the split's algorithm changes: cached splits are then recomputed
_USAGES = ["Training", "PublicTest", "PrivateTest"]  # fer2013.csv's splits


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
        return FaceSet(**{k: None if v is None else v[index] for k, v in vars(self).items()})


@dataclass
class Dataset:
    """A training split, an optional test split, and where they came from."""

    name: str  # used for the report folder: report/<name>/
    layout: str
    train: FaceSet
    test: FaceSet | None = None
    files: list[Path] = field(default_factory=list)  # source files, hashed into provenance
    synthetic: bool = False  # the embedded demo dataset (its folder carries SYNTHETIC.txt)


def cached_arrays(entry: Path | None, compute) -> dict[str, np.ndarray]:
    """``compute()`` (a dict of arrays), kept in the .npz file ``entry`` and read from there next time."""
    if entry is not None and entry.exists():
        with np.load(entry) as z:
            return {k: z[k] for k in z.files}
    arrays = compute()
    if entry is not None:
        atomic_savez(entry, **arrays)
    return arrays


def _open_text(path: Path):
    return (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8-sig", errors="replace")


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of the header and of every data row (the reader skips blank lines)."""
    with _open_text(path) as f:
        return [(n, line.strip()) for n, line in enumerate(f, start=1) if line.strip()]


def _line_of(path: Path, row: int) -> int:
    return _lines(path)[row + 1][0]


def _read_table(path: Path, *allowed: str):
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
    except (pd.errors.ParserError, pd.errors.ParserWarning):  # a row with more fields than the header
        table, lines = None, [(n, line.split(",")) for n, line in _lines(path)]
    header = [str(c).strip().lower() for c in (lines[0][1] if table is None else table.columns)]
    if ",".join(header) not in allowed:
        raise DataError(f"{path}, line 1: columns {','.join(header)}, expected {' or '.join(allowed)}")
    if table is None:
        line, fields = next((n, fields) for n, fields in lines if len(fields) != len(header))
        raise DataError(f"{path}, line {line}: expected {len(header)} comma-separated fields ({','.join(header)}), "
                        f"found {len(fields)}")
    table.columns = header
    if table.empty:
        raise DataError(f"{path}: no data rows after the header")
    return table


def _bad_row(path: Path, table, rows) -> DataError:
    """The error naming the first of ``rows`` that does not parse, or whose label or Usage is out of range."""
    for row in rows:
        key_text, pixel_text, *usage = table.iloc[row].str.strip()
        pixels = pixel_text.split()
        if not key_text.lstrip("-").isdigit():
            problem = f"{table.columns[0]} {key_text!r} is not an integer"
        elif table.columns[0] != "id" and not 0 <= int(key_text) < len(CLASS_NAMES):
            problem = f"label {key_text} is outside 0..6 ({', '.join(f'{i} {n}' for i, n in enumerate(CLASS_NAMES))})"
        elif len(pixels) != N_PIXELS:
            problem = f"expected {N_PIXELS} pixel values (48x48), found {len(pixels)}"
        elif bad := [i for i, t in enumerate(pixels) if not t.isdigit() or int(t) > 255]:
            problem = f"pixel {bad[0]} is {pixels[bad[0]]!r}, expected an integer 0-255"
        elif usage and usage[0] not in _USAGES:
            problem = f"Usage {usage[0]!r}, expected Training, PublicTest or PrivateTest"
        else:
            continue
        return DataError(f"{path}, line {_line_of(path, row)}: {problem}")
    return DataError(f"{path}: unreadable rows")  # not reached: the rows given hold a bad one


def _check_unique_ids(path: Path, ids: np.ndarray) -> None:
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        rows = np.flatnonzero(ids == ids[first[counts > 1][0]])[:2]
        raise DataError(f"{path}, lines {_line_of(path, rows[0])} and {_line_of(path, rows[1])}: duplicate id "
                        f"{ids[rows[0]]} (ids must be unique)")


def _parse_csv(path: Path, *allowed: str) -> dict[str, np.ndarray]:
    """The arrays of a homework CSV (label,feature or id,feature) or of fer2013.csv (emotion,pixels,usage).

    The pixels are one C parse of all the rows, each followed by -1: every row holds 2,304 values when the -1s
    fall every 2,305th place (a value out of 0..255, -1 included, fails the range check)."""
    table = _read_table(path, *allowed)
    key, pixel_column = table.columns[:2]
    try:
        keys = table[key].astype(np.int64).to_numpy()
        values = np.fromstring(" -1 ".join(table[pixel_column]) + " -1", dtype=np.int16, sep=" ")
        values = values.reshape(len(table), N_PIXELS + 1)
    except ValueError:  # a key or a pixel that is not an integer, or a row of another length
        raise _bad_row(path, table, range(len(table))) from None
    bad = (values[:, -1] != -1) | (values[:, :-1] < 0).any(1) | (values[:, :-1] > 255).any(1)
    bad |= (key != "id") & ((keys < 0) | (keys >= len(CLASS_NAMES)))
    if "usage" in table:
        bad |= ~table["usage"].str.strip().isin(_USAGES).to_numpy()
    if bad.any():
        raise _bad_row(path, table, np.flatnonzero(bad))
    if key == "id":
        _check_unique_ids(path, keys)
    usage = {"usage": table["usage"].str.strip().to_numpy(dtype=str)} if "usage" in table else {}
    return {"images": values[:, :-1].astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE),
            "ids" if key == "id" else "labels": keys, **usage}


def _cached_csv(path: Path, cache_dir: Path | None, *allowed: str) -> dict[str, np.ndarray]:
    """:func:`_parse_csv`, cached by content (3 s -> 0.2 s for the real train.csv.gz, which every page loads)."""
    entry = cache_dir and Path(cache_dir) / f"{file_sha256(path)}-v{_CACHE_FORMAT}.npz"
    return cached_arrays(entry, lambda: _parse_csv(path, *allowed))


def read_homework_csv(path: Path, cache_dir: Path | None = None) -> FaceSet:
    """One homework CSV file: ``label,feature`` (training) or ``id,feature`` (unlabeled test)."""
    arrays = _cached_csv(Path(path), cache_dir, "label,feature", "id,feature")
    return FaceSet(arrays["images"], arrays.get("labels"), arrays.get("ids", np.arange(len(arrays["images"]))))


def _read_id_labels(label_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) from an ``id,label`` file; ids may be integers (42, 00042) or image names (00042.jpg)."""
    table = _read_table(label_file, "id,label")
    ids = table["id"].map(_id_from_stem)
    for column, bad, what in (("id", ids.isna(), "neither an integer nor an image name like 00042.jpg"),
                              ("label", ~table["label"].str.strip().isin(list("0123456")), "not an integer 0-6")):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{label_file}, line {_line_of(label_file, row)}: {column} "
                            f"{table[column].iloc[row].strip()!r} is {what}")
    ids, labels = ids.to_numpy(dtype=np.int64), table["label"].astype(np.int64).to_numpy()
    _check_unique_ids(label_file, ids)
    return ids, labels


def _read_images(paths: list[Path]) -> np.ndarray:
    """48x48 uint8 faces from image files; colour or larger images are converted, with one warning for all."""
    from PIL import Image, UnidentifiedImageError

    faces, converted = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                if min(img.size) < IMAGE_SIZE:
                    raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]}, expected 48x48 grayscale "
                                    "(smaller images are refused: upscaling invents detail)")
                if img.mode != "L" or img.size != (IMAGE_SIZE, IMAGE_SIZE):
                    converted.append(f"{path}: {img.mode} {img.size[0]}x{img.size[1]}")
                faces.append(np.asarray(img.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)))
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataError(f"{path}: not a readable image ({err.__class__.__name__}: {err})") from None
    if converted:
        warnings.warn(f"{len(converted)} image(s) converted to 48x48 grayscale, e.g. {converted[0]}",
                      DataWarning, stacklevel=3)
    return np.stack(faces)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _id_from_stem(text: str) -> int | None:
    """The integer id of a face from its image name or id text: "00042.jpg", "00042" and "42" all give 42."""
    stem = text.strip()
    stem = Path(stem).stem if Path(stem).suffix.lower() in IMAGE_SUFFIXES else stem
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


def first_existing(root: Path, *names: str) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _homework(path: Path, cache_dir: Path | None) -> tuple[FaceSet, FaceSet | None, list[Path]]:
    """Layout (a): one file, or a folder of train.csv, test.csv and test_labels.csv where the labels are not hidden."""
    if path.is_file():
        return read_homework_csv(path, cache_dir), None, [path]
    train_file, test_file = (first_existing(path, f"{name}.csv", f"{name}.csv.gz") for name in ("train", "test"))
    train, test = (read_homework_csv(f, cache_dir) if f else None for f in (train_file, test_file))
    if train.labels is None:
        raise DataError(f"{train_file}: a training file needs a label column (label,feature), found id,feature")
    label_file = test and first_existing(path, "test_labels.csv", "test_labels.csv.gz")
    if label_file:
        labels = dict(zip(*(a.tolist() for a in _read_id_labels(label_file))))
        missing = [i for i in test.ids.tolist() if i not in labels]
        if missing:
            raise DataError(f"{label_file}: no label for test id {missing[0]} ({len(missing)} test id(s) without one)")
        test.labels = np.array([labels[i] for i in test.ids.tolist()], dtype=np.int64)
    return train, test, [p for p in (train_file, test_file, label_file) if p]


def _kaggle(path: Path, cache_dir: Path | None) -> tuple[FaceSet, FaceSet, list[Path]]:
    """Layout (b): Training is the train split, PublicTest + PrivateTest the labeled test; ids are the file's rows."""
    path = path if path.is_file() else first_existing(path, "fer2013.csv", "fer2013.csv.gz")
    arrays = _cached_csv(path, cache_dir, "emotion,pixels,usage")
    faces = FaceSet(arrays["images"], arrays["labels"], np.arange(len(arrays["labels"])), arrays["usage"])
    return faces.subset(faces.usage == "Training"), faces.subset(faces.usage != "Training"), [path]


def _image_ids(root: Path, _) -> tuple[FaceSet, FaceSet | None, list[Path]]:
    """Layout (c), the course's own. It pads names with zeros (train_img/00000.jpg, test_img/0000.jpg) and writes
    plain integer ids in train.csv; ids and names are matched by their integer value, so any padding works."""
    label_file = first_existing(root, "train.csv", "train.csv.gz") or root / "train.csv"
    ids, labels = _read_id_labels(label_file)
    images = _images_by_id(root / "train_img")
    missing = [row for row, face_id in enumerate(ids.tolist()) if face_id not in images]
    if missing:
        face_id = ids[missing[0]]
        raise DataError(f"{label_file}, line {_line_of(label_file, missing[0])}: no image for id {face_id} in "
                        f"{root / 'train_img'} (looked for {face_id:05d}.jpg, any zero padding)")
    test_images = _images_by_id(root / "test_img") if (root / "test_img").is_dir() else {}
    test_ids = np.array(sorted(test_images), dtype=np.int64)
    test = FaceSet(_read_images([test_images[i] for i in test_ids]), None, test_ids) if test_images else None
    return FaceSet(_read_images([images[i] for i in ids.tolist()]), labels, ids), test, [label_file]


def _class_folders(root: Path, _) -> tuple[FaceSet, FaceSet | None, list[Path]]:
    """Layout (d): train/<class>/*.jpg and optionally test/<class>/*.jpg (labeled)."""
    classes = {**{n.lower(): i for i, n in enumerate(CLASS_NAMES)}, **{str(i): i for i in range(len(CLASS_NAMES))}}

    def read(split_dir: Path) -> FaceSet:
        paths, labels = [], []
        for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if folder.name.lower() not in classes:
                raise DataError(f"{folder}: unknown class folder {folder.name!r}; expected one of "
                                f"{', '.join(CLASS_NAMES)} (or 0-6)")
            paths += _image_files(folder)
            labels += [classes[folder.name.lower()]] * (len(paths) - len(labels))
        if not paths:
            raise DataError(f"{split_dir}: no images found in its class folders")
        return FaceSet(_read_images(paths), np.array(labels, dtype=np.int64), np.arange(len(paths)),
                       names=np.array([p.relative_to(split_dir).as_posix() for p in paths]))

    return read(root / "train"), read(root / "test") if (root / "test").is_dir() else None, []


def _is_fer2013_csv(path: Path) -> bool:
    """Whether a CSV file starts with the original Kaggle header; reads the first line only."""
    try:
        with _open_text(path) as f:
            return f.readline(4096).strip().lower().startswith("emotion,pixels")
    except (OSError, EOFError):
        return False  # the full reader reports what is wrong with the file


def detect_layout(path: Path) -> str | None:
    """The layout of a dataset folder or file ("image-ids", "homework-csv", "fer2013.csv", "class-folders"),
    or None when ``path`` holds none of them. The one place that decides what a folder is."""
    path = Path(path)
    if path.is_file():
        return "fer2013.csv" if _is_fer2013_csv(path) else "homework-csv"
    found = {"image-ids": (path / "train_img").is_dir(),
             "homework-csv": first_existing(path, "train.csv", "train.csv.gz"),
             "fer2013.csv": first_existing(path, "fer2013.csv", "fer2013.csv.gz"),
             "class-folders": (path / "train").is_dir()}
    return next((layout for layout, here in found.items() if here), None)


_READERS = {"homework-csv": _homework, "fer2013.csv": _kaggle, "image-ids": _image_ids, "class-folders": _class_folders}


def load_dataset(path: str | Path, cache_dir: Path | None = None) -> Dataset:
    """A dataset from a folder or file, of the layout detected; the demo data (SYNTHETIC.txt) is named "synthetic"."""
    path = Path(path)
    layout = detect_layout(path)
    if layout is None:
        raise DataError(f"{path}: no dataset found{'' if path.exists() else ' (no such file or directory)'}. Expected "
                        "one of: train.csv[.gz] (+ test.csv[.gz]); fer2013.csv[.gz]; train_img/ + train.csv; "
                        "train/<class name>/*.jpg")
    train, test, files = _READERS[layout](path, cache_dir or default_cache_dir())
    empty = [CLASS_NAMES[i] for i in np.flatnonzero(np.bincount(train.labels, minlength=len(CLASS_NAMES)) == 0)]
    if empty:
        warnings.warn(f"{path}: no training examples of {', '.join(empty)}; the model cannot learn these classes",
                      DataWarning, stacklevel=2)
    synthetic = ((path if path.is_dir() else path.parent) / SYNTHETIC_MARKER).is_file()
    name = "synthetic" if synthetic else path.name.split(".")[0] if path.is_file() else path.resolve().name
    return Dataset(name, layout, train, test, files, synthetic)


def load_test_faces(path: str | Path, cache_dir: Path | None = None) -> FaceSet:
    """The faces to predict: a test CSV file, or the test split of a dataset directory."""
    path = Path(path)
    single = path.is_file() and not _is_fer2013_csv(path)
    test = read_homework_csv(path, cache_dir or default_cache_dir()) if single else load_dataset(path, cache_dir).test
    if test is None:
        raise DataError(f"{path}: has no test split to predict")
    return test


def train_val_split(faces: FaceSet, val_fraction: float = 0.1, seed: int = 0, groups: np.ndarray | None = None,
                    cache_dir: Path | None = None) -> tuple[FaceSet, FaceSet]:
    """Deterministic split stratified by class: every class keeps its share in both parts. ``groups`` (one id per
    face, e.g. copies of one photo) keeps every group on one side, so no validation face has a copy in training.
    The split depends only on the labels, groups, fraction and seed; ``cache_dir`` stores it under their hash."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    settings = np.frombuffer(json.dumps([val_fraction, seed, _SPLIT_FORMAT]).encode(), dtype=np.uint8)
    parts = [faces.labels.astype(np.int64), np.asarray([] if groups is None else groups, dtype=np.int64), settings]
    entry = cache_dir and Path(cache_dir) / f"split-{array_sha256(*parts)[:16]}.npz"

    def split() -> dict[str, np.ndarray]:
        from sklearn.model_selection import StratifiedGroupKFold, train_test_split  # a second, only when computed

        index, counts = np.arange(len(faces)), np.bincount(faces.labels)
        if groups is not None:  # the first of StratifiedGroupKFold's folds is the validation part
            folds = StratifiedGroupKFold(max(2, round(1 / val_fraction)), shuffle=True, random_state=seed)
            try:
                train, val = next(folds.split(index, faces.labels, groups))
            except ValueError as err:  # fewer groups than folds: sklearn's words, with what to do
                raise DataError(f"{len(faces)} training faces are too few for a {val_fraction:.0%} validation split "
                                f"that keeps copies on one side ({err}); add faces") from None
        else:  # stratified where every class has two faces and room in validation: tiny sets split plainly
            fits = counts[counts > 0].min() >= 2 and len(faces) * val_fraction >= (counts > 0).sum()
            train, val = train_test_split(index, test_size=val_fraction, random_state=seed,
                                          stratify=faces.labels if fits else None)
        return {"train": np.sort(train), "val": np.sort(val)}

    arrays = cached_arrays(entry, split)
    return faces.subset(arrays["train"]), faces.subset(arrays["val"])
