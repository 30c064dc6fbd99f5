"""Reading FER2013 in every supported layout, with clear errors, a parsed-array cache and the split.

Layouts, detected from the path given:
  (a) homework CSV: ``train.csv`` (label,feature) and ``test.csv`` (id,feature), ``.csv`` or ``.csv.gz``;
      a directory holding them is a dataset, a single file is one split;
  (b) the original ``fer2013.csv`` (emotion,pixels,Usage; Training / PublicTest / PrivateTest);
  (c) ``train_img/<id>.jpg`` + ``train.csv`` (id,label), and ``test_img/<id>.jpg``;
  (d) one folder per class: ``train/<class name>/*.jpg`` and ``test/<class name>/*.jpg``.
Every image comes back as uint8 (N, 48, 48); labels are int64 in 0..6, or None for unlabeled test sets.
"""
from __future__ import annotations

import json
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_lib import CLASS_NAMES, IMAGE_SIZE
from fer_lib.core.io import IMAGE_SUFFIXES, array_sha256, atomic_savez, default_cache_dir, file_sha256
from fer_lib.data.fastcsv import parse_key_pixel_rows

N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
_CACHE_FORMAT = 2  # bump when the parsed-array layout changes, so old cache entries are ignored


class DataError(ValueError):
    """Bad input data; the message names the file, the row or image, and what was expected."""


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
# raw bytes and the cache


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it ends in .gz."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = zlib.decompress(data, wbits=31)  # one C call: twice as fast as gzip.open().read()
        except zlib.error as err:
            raise DataError(f"{path}: not a valid gzip file ({err})") from None
    return data


def _cached(path: Path, cache_dir: Path | None, parse) -> dict[str, np.ndarray]:
    """Arrays parsed from ``path``, from the cache when its content hash has been seen before."""
    if cache_dir is None:
        return parse(path)
    entry = Path(cache_dir) / f"{file_sha256(path)}-v{_CACHE_FORMAT}.npz"
    if entry.exists():
        with np.load(entry) as npz:
            return {k: npz[k] for k in npz.files}
    arrays = parse(path)
    atomic_savez(entry, **arrays)
    return arrays


# ---------------------------------------------------------------------------------------------
# homework CSV: label,feature / id,feature


def _header_and_body(path: Path) -> tuple[list[str], bytes]:
    data = _read_bytes(path)
    if not data.strip():
        raise DataError(f"{path}: empty file (expected a header line and data rows)")
    newline = data.find(b"\n")
    header_line, body = (data, b"") if newline < 0 else (data[:newline], data[newline + 1:])
    header = [c.strip().lower() for c in header_line.decode("utf-8", "replace").lstrip("\ufeff").split(",")]
    return header, body


def _check_columns(path: Path, header: list[str], allowed: list[list[str]]) -> list[str]:
    for columns in allowed:
        if header == columns:
            return columns
    expected = " or ".join(",".join(c) for c in allowed)
    closest = max(allowed, key=lambda columns: len(set(columns) & set(header)))
    missing = [c for c in closest if c not in header]
    unknown = sorted(set(header) - set().union(*map(set, allowed)))
    detail = "; ".join(filter(None, [missing and f"missing {missing}", unknown and f"unknown {unknown}"]))
    raise DataError(f"{path}, line 1: columns {','.join(header)!s} - expected {expected}"
                    + (f" ({detail})" if detail else ""))


def _parse_row_slowly(path: Path, line_no: int, line: str, key_name: str) -> tuple[int, np.ndarray]:
    """Parse one 'key,pixels' row, raising a DataError that says exactly what is wrong."""
    where = f"{path}, line {line_no}"
    fields = line.split(",")
    if len(fields) != 2:
        raise DataError(f"{where}: expected 2 comma-separated fields ({key_name},feature), found {len(fields)}")
    key_text, pixel_text = fields
    try:
        key = int(key_text)
    except ValueError:
        raise DataError(f"{where}: {key_name} {key_text.strip()!r} is not an integer") from None
    tokens = pixel_text.split()
    if len(tokens) != N_PIXELS:
        raise DataError(f"{where}: expected {N_PIXELS} pixel values (48x48), found {len(tokens)}")
    pixels = np.empty(N_PIXELS, dtype=np.int16)
    for i, token in enumerate(tokens):
        if not token.isdigit():
            raise DataError(f"{where}: pixel {i} is {token!r}, expected an integer 0-255")
        value = int(token)
        if value > 255:
            raise DataError(f"{where}: pixel {i} is {value}, expected an integer 0-255")
        pixels[i] = value
    return key, pixels


def _parse_key_pixel_csv(path: Path, body: bytes, key_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys (N,), pixels (N, 2304) int16) from a key,feature body; line numbers count the header."""
    table = parse_key_pixel_rows(body, N_PIXELS)
    if table is None:  # irregular somewhere: find and name the first bad row
        keys, rows = [], []
        for line_no, line in enumerate(body.decode("utf-8", "replace").splitlines(), start=2):
            if not line.strip():
                continue
            key, pixels = _parse_row_slowly(path, line_no, line, key_name)
            keys.append(key)
            rows.append(pixels)
        if not rows:
            raise DataError(f"{path}: no data rows after the header")
        return np.array(keys, dtype=np.int64), np.stack(rows)
    keys, pixels = table
    bad = np.flatnonzero((pixels > 255).any(axis=1))
    if bad.size:  # the fast parser reads up to three digits, so 256-999 lands here
        row = bad[0]
        col = int(np.flatnonzero(pixels[row] > 255)[0])
        raise DataError(f"{path}, line {row + 2}: pixel {col} is {pixels[row, col]}, expected an integer 0-255")
    return keys, pixels


def _check_labels(path: Path, labels: np.ndarray, line_offset: int = 2) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= len(CLASS_NAMES)))
    if bad.size:
        raise DataError(
            f"{path}, line {bad[0] + line_offset}: label {labels[bad[0]]} is outside 0..6 "
            f"({', '.join(f'{i} {n}' for i, n in enumerate(CLASS_NAMES))})"
        )


def _check_unique_ids(path: Path, ids: np.ndarray, line_offset: int = 2) -> None:
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup_value = ids[first[counts > 1][0]]
        lines = np.flatnonzero(ids == dup_value)[:2] + line_offset
        raise DataError(f"{path}, lines {lines[0]} and {lines[1]}: duplicate id {dup_value} (ids must be unique)")


def warn_empty_classes(source: str, labels: np.ndarray) -> None:
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    empty = [CLASS_NAMES[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        warnings.warn(f"{source}: no training examples of {', '.join(empty)}; the model cannot learn "
                      "these classes", DataWarning, stacklevel=3)


def _parse_homework_csv(path: Path) -> dict[str, np.ndarray]:
    header, body = _header_and_body(path)
    columns = _check_columns(path, header, [["label", "feature"], ["id", "feature"]])
    keys, pixels = _parse_key_pixel_csv(path, body, columns[0])
    images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    if columns[0] == "label":
        _check_labels(path, keys)
        return {"images": images, "labels": keys, "ids": np.arange(len(keys), dtype=np.int64)}
    _check_unique_ids(path, keys)
    return {"images": images, "ids": keys}


def read_homework_csv(path: Path, cache_dir: Path | None = None) -> FaceSet:
    """One homework CSV file: ``label,feature`` (training) or ``id,feature`` (unlabeled test)."""
    arrays = _cached(Path(path), cache_dir, _parse_homework_csv)
    faces = FaceSet(arrays["images"], arrays.get("labels"), arrays["ids"])
    if faces.labels is not None:
        warn_empty_classes(str(path), faces.labels)
    return faces


# ---------------------------------------------------------------------------------------------
# original fer2013.csv: emotion,pixels,Usage


def _parse_fer2013_csv(path: Path) -> dict[str, np.ndarray]:
    header, body = _header_and_body(path)
    _check_columns(path, header, [["emotion", "pixels", "usage"]])
    lines = body.decode("utf-8", "replace").splitlines()
    usage, key_pixel_lines = [], []
    for line_no, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        head, sep, split_name = line.rpartition(",")
        if not sep:
            raise DataError(f"{path}, line {line_no}: expected 3 fields (emotion,pixels,Usage)")
        usage.append(split_name.strip())
        key_pixel_lines.append(head)
    unknown = sorted(set(usage) - {"Training", "PublicTest", "PrivateTest"})
    if unknown:
        line_no = 2 + usage.index(unknown[0])
        raise DataError(f"{path}, line {line_no}: Usage {unknown[0]!r}, expected Training, PublicTest or PrivateTest")
    labels, pixels = _parse_key_pixel_csv(path, "\n".join(key_pixel_lines).encode(), "emotion")
    _check_labels(path, labels)
    return {"images": pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE), "labels": labels,
            "usage": np.array(usage)}


def read_fer2013_csv(path: Path, cache_dir: Path | None = None) -> tuple[FaceSet, FaceSet]:
    """The original Kaggle file: Training is the train split; PublicTest + PrivateTest the (labeled) test, each face
    with its Usage. Ids are the row numbers of the file (0 = its first face)."""
    arrays = _cached(Path(path), cache_dir, _parse_fer2013_csv)
    ids = np.arange(len(arrays["labels"]), dtype=np.int64)
    everything = FaceSet(arrays["images"], arrays["labels"], ids, arrays["usage"].astype(str))
    is_train = everything.usage == "Training"
    train, test = everything.subset(is_train), everything.subset(~is_train)
    train.usage = None  # the training split is all "Training"
    warn_empty_classes(str(path), train.labels)
    return train, test


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
        images = [read_face_image(p)
                  for p in tqdm(paths, desc="reading images", leave=False,
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


def _read_id_label_file(label_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) from an ``id,label`` file; ids may be integers (42, 00042) or image names (00042.jpg)."""
    header, body = _header_and_body(label_file)
    _check_columns(label_file, header, [["id", "label"]])
    ids, labels = [], []
    for line_no, line in enumerate(body.decode("utf-8", "replace").splitlines(), start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        where = f"{label_file}, line {line_no}"
        if len(fields) != 2:
            raise DataError(f"{where}: expected 2 comma-separated fields (id,label), found {len(fields)}: "
                            f"{line[:40]!r}")
        face_id = _id_from_stem(fields[0])
        if face_id is None:
            raise DataError(f"{where}: id {fields[0].strip()!r} is neither an integer nor an image name like 00042.jpg")
        try:
            label = int(fields[1])
        except ValueError:
            raise DataError(f"{where}: label {fields[1].strip()!r} is not an integer 0-6") from None
        ids.append(face_id)
        labels.append(label)
    if not ids:
        raise DataError(f"{label_file}: no data rows after the header")
    return np.array(ids, np.int64), np.array(labels, np.int64)


def _test_labels(label_file: Path, test_ids: np.ndarray) -> np.ndarray:
    """The labels of ``test_ids`` from an id,label file; every test id needs one."""
    ids, labels = _read_id_label_file(label_file)
    _check_labels(label_file, labels)
    _check_unique_ids(label_file, ids)
    by_id = dict(zip(ids.tolist(), labels.tolist()))
    missing = [i for i in test_ids.tolist() if i not in by_id]
    if missing:
        raise DataError(f"{label_file}: no label for test id {missing[0]} ({len(missing)} test id(s) without one)")
    return np.array([by_id[i] for i in test_ids.tolist()], dtype=np.int64)


def read_image_id_layout(root: Path) -> tuple[FaceSet, FaceSet | None, list[Path]]:
    """Layout (c), the course's own: ``train.csv`` (id,label) naming ``train_img/<id>.jpg``; ``test_img/<id>.jpg``.

    The course pads names with zeros (train_img/00000.jpg, test_img/0000.jpg) and writes plain integer ids
    in train.csv; ids and names are matched by their integer value, so any padding (or none) works.
    """
    label_file = next((root / n for n in ("train.csv", "train.csv.gz") if (root / n).exists()), root / "train.csv")
    ids, labels = _read_id_label_file(label_file)
    _check_labels(label_file, labels)
    _check_unique_ids(label_file, ids)
    images = _images_by_id(root / "train_img")
    paths = []
    for i, face_id in enumerate(ids):
        if face_id not in images:
            raise DataError(f"{label_file}, line {i + 2}: no image for id {face_id} in {root / 'train_img'} "
                            f"(looked for {face_id}.jpg with any zero padding, e.g. {face_id:05d}.jpg)")
        paths.append(images[face_id])
    train = FaceSet(_read_images(paths), labels, ids)
    warn_empty_classes(str(label_file), labels)
    test = None
    if (root / "test_img").is_dir():
        test_images = _images_by_id(root / "test_img")
        test_ids = np.array(sorted(test_images), dtype=np.int64)
        test = FaceSet(_read_images([test_images[i] for i in test_ids]), None, test_ids)
    return train, test, [label_file]


def _class_index(folder: Path) -> int:
    names = {n.lower(): i for i, n in enumerate(CLASS_NAMES)}
    name = folder.name.lower()
    if name.isdigit() and int(name) < len(CLASS_NAMES):
        return int(name)
    if name not in names:
        raise DataError(f"{folder}: unknown class folder {folder.name!r}; expected one of {', '.join(CLASS_NAMES)} "
                        "(or 0-6)")
    return names[name]


def _read_class_folders(split_dir: Path) -> FaceSet:
    paths, labels = [], []
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        label = _class_index(folder)
        files = _image_files(folder)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"{split_dir}: no images found in its class folders")
    labels = np.array(labels, dtype=np.int64)
    names = np.array([p.relative_to(split_dir).as_posix() for p in paths])
    return FaceSet(_read_images(paths), labels, np.arange(len(paths), dtype=np.int64), names=names)


def read_class_folder_layout(root: Path) -> tuple[FaceSet, FaceSet | None]:
    """Layout (d): train/<class>/*.jpg and optionally test/<class>/*.jpg (labeled)."""
    train = _read_class_folders(root / "train")
    warn_empty_classes(str(root / "train"), train.labels)
    test = _read_class_folders(root / "test") if (root / "test").is_dir() else None
    return train, test


# ---------------------------------------------------------------------------------------------
# detection


def first_existing(root: Path, *names: str) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


SYNTHETIC_MARKER = "SYNTHETIC.txt"  # a folder holding this file is the embedded demo dataset, whatever its name


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
    if first_existing(path, "train.csv", "train.csv.gz") is not None:
        return "homework-csv"
    if first_existing(path, "fer2013.csv", "fer2013.csv.gz") is not None:
        return "fer2013.csv"
    if (path / "train").is_dir():
        return "class-folders"
    return None


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
    layout = detect_layout(path)
    synthetic = is_synthetic(path)
    if synthetic:
        name = "synthetic"
    if path.is_file():
        if layout == "fer2013.csv":
            train, test = read_fer2013_csv(path, cache_dir)
            return Dataset(name or _stem(path), layout, train, test, [path], synthetic)
        return Dataset(name or _stem(path), layout, read_homework_csv(path, cache_dir), None, [path], synthetic)
    name = name or path.resolve().name
    if layout == "image-ids":
        train, test, files = read_image_id_layout(path)
        return Dataset(name, layout, train, test, files, synthetic)
    if layout == "homework-csv":
        train_csv = first_existing(path, "train.csv", "train.csv.gz")
        test_csv = first_existing(path, "test.csv", "test.csv.gz")
        train = read_homework_csv(train_csv, cache_dir)
        if train.labels is None:
            raise DataError(f"{train_csv}: a training file needs a label column (label,feature), found id,feature")
        test = read_homework_csv(test_csv, cache_dir) if test_csv else None
        label_file = first_existing(path, "test_labels.csv", "test_labels.csv.gz") if test is not None else None
        if label_file:  # the test labels, where they are not hidden (the synthetic demo writes them)
            test.labels = _test_labels(label_file, test.ids)
        return Dataset(name, layout, train, test, [p for p in (train_csv, test_csv, label_file) if p], synthetic)
    if layout == "fer2013.csv":
        fer_csv = first_existing(path, "fer2013.csv", "fer2013.csv.gz")
        train, test = read_fer2013_csv(fer_csv, cache_dir)
        return Dataset(name, layout, train, test, [fer_csv], synthetic)
    if layout == "class-folders":
        train, test = read_class_folder_layout(path)
        return Dataset(name, layout, train, test, [], synthetic)
    raise DataError(
        f"{path}: no dataset found. Expected one of: train.csv[.gz] (+ test.csv[.gz]); fer2013.csv[.gz]; "
        "train_img/ + train.csv; train/<class name>/*.jpg"
    )


def _is_fer2013_csv(path: Path) -> bool:
    """Whether a CSV file starts with the original Kaggle header; reads the first line only."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            first = f.readline(4096)
    except (OSError, EOFError):
        return False  # the full reader reports what is wrong with the file
    return first.decode("utf-8", "replace").lstrip("\ufeff").strip().lower().startswith("emotion,pixels")


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


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
    fraction and the seed; with ``cache_dir`` it is stored there under a hash of those (every notebook of a
    report asks for the same split, and computing it imports scikit-learn, seconds per process).
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
    train_idx, val_idx = _split_indices(faces.labels, val_fraction, seed, groups)
    if entry is not None:
        atomic_savez(entry, train=train_idx, val=val_idx)
    return faces.subset(train_idx), faces.subset(val_idx)


def _split_indices(labels: np.ndarray, val_fraction: float, seed: int,
                   groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (training, validation) indices: the split itself, with scikit-learn."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    index = np.arange(len(labels))
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    n_folds = max(2, round(1 / val_fraction))
    # stratification needs two examples of a class; tiny sets fall back to a seeded plain split
    stratifiable = counts[counts > 0].min() >= n_folds and len(labels) * val_fraction >= (counts > 0).sum()
    if groups is not None:
        if stratifiable:
            folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            train_idx, val_idx = next(folds.split(index, labels, groups))
        else:
            from sklearn.model_selection import GroupShuffleSplit

            folds = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
            train_idx, val_idx = next(folds.split(index, labels, groups))
    else:
        stratify = labels if counts[counts > 0].min() >= 2 and len(labels) * val_fraction >= (counts > 0).sum() \
            else None
        train_idx, val_idx = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=stratify)
    return np.sort(train_idx), np.sort(val_idx)
