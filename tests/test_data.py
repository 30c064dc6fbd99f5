"""Data loading: every layout, the cache, the split, and bad input named by file and line."""
from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
from PIL import Image

import fer_lib.data.layouts as data_mod
from fer_lib.data.layouts import (
    DataError,
    DataWarning,
    FaceSet,
    load_dataset,
    load_test_faces,
    read_homework_csv,
    train_val_split,
)

from .conftest import pixel_row, write_csv


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def labelled_rows(rng, n=20, labels=None):
    labels = labels if labels is not None else [i % 7 for i in range(n)]
    return [f"{label},{pixel_row(rng)}" for label in labels]


# ----------------------------------------------------------------------------------------- layouts


def test_homework_csv_and_gz_read_the_same(tmp_path, rng):
    rows = labelled_rows(rng)
    plain = read_homework_csv(write_csv(tmp_path / "train.csv", "label,feature", rows))
    gz = read_homework_csv(write_csv(tmp_path / "train.csv.gz", "label,feature", rows))
    assert plain.images.shape == (20, 48, 48) and plain.images.dtype == np.uint8
    np.testing.assert_array_equal(plain.images, gz.images)
    np.testing.assert_array_equal(plain.labels, [i % 7 for i in range(20)])
    # pixels are row-major: the first values of the text are the top row
    first = [int(v) for v in rows[0].split(",")[1].split()[:48]]
    np.testing.assert_array_equal(plain.images[0, 0], first)


def test_directory_with_train_and_test(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    assert ds.layout == "homework-csv" and ds.synthetic and ds.name == "synthetic"  # SYNTHETIC.txt marks it
    assert len(ds.train) == 300 and ds.train.labels is not None
    np.testing.assert_array_equal(ds.test.ids, np.arange(60))
    # the demo writes its test labels beside test.csv (test_labels.csv): read, and aligned by id
    truth = np.loadtxt(tiny_dataset / "test_labels.csv", delimiter=",", skiprows=1, dtype=np.int64)
    np.testing.assert_array_equal(ds.test.labels, truth[np.argsort(truth[:, 0]), 1][ds.test.ids])
    assert [p.name for p in ds.files] == ["train.csv", "test.csv", "test_labels.csv"]


def test_hidden_test_labels_stay_hidden_and_a_label_file_must_cover_every_id(tiny_dataset, tmp_path):
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).write_bytes((tiny_dataset / name).read_bytes())
    assert load_dataset(tmp_path).test.labels is None  # the homework's layout: labels hidden
    (tmp_path / "test_labels.csv").write_text("id,label\n0,3\n1,4\n")
    with pytest.raises(DataError, match=r"test_labels.csv: no label for test id 2 \(58 test id"):
        load_dataset(tmp_path)


def test_original_fer2013_csv(tmp_path, rng):
    usages = ["Training"] * 8 + ["PublicTest"] * 3 + ["PrivateTest"] * 2
    rows = [f"{i % 7},{pixel_row(rng)},{u}" for i, u in enumerate(usages)]
    write_csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage", rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(tmp_path)
    assert ds.layout == "fer2013.csv"
    assert len(ds.train) == 8 and len(ds.test) == 5
    assert ds.test.usage.tolist() == ["PublicTest"] * 3 + ["PrivateTest"] * 2 and set(ds.train.usage) == {"Training"}
    assert ds.test.ids.tolist() == list(range(8, 13))  # rows of the file
    np.testing.assert_array_equal(ds.test.labels, [8 % 7, 9 % 7, 10 % 7, 11 % 7, 12 % 7])


def _save_gray(path, rng, size=(48, 48), mode="L"):
    arr = rng.integers(0, 256, (size[1], size[0]) + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
    Image.fromarray(arr, mode).save(path)
    return arr


def test_image_id_layout(tmp_path, rng):
    (tmp_path / "train_img").mkdir()
    (tmp_path / "test_img").mkdir()
    pixels = {i: _save_gray(tmp_path / "train_img" / f"{i}.png", rng) for i in range(7)}
    for i in (3, 1, 2):
        _save_gray(tmp_path / "test_img" / f"{i}.png", rng)
    write_csv(tmp_path / "train.csv", "id,label", [f"{i},{6 - i}" for i in range(7)])
    ds = load_dataset(tmp_path)
    assert ds.layout == "image-ids"
    np.testing.assert_array_equal(ds.train.labels, [6 - i for i in range(7)])
    np.testing.assert_array_equal(ds.train.images[2], pixels[2])
    np.testing.assert_array_equal(ds.test.ids, [1, 2, 3])


def test_class_folder_layout(tmp_path, rng):
    for split in ("train", "test"):
        for name in ("Angry", "disgust", "Fear", "happy", "Sad", "Surprise", "Neutral"):
            (tmp_path / split / name).mkdir(parents=True)
            _save_gray(tmp_path / split / name / "a.jpg", rng)
    ds = load_dataset(tmp_path)
    assert ds.layout == "class-folders"
    assert sorted(ds.train.labels.tolist()) == list(range(7))
    assert ds.test.labels is not None


def test_test_faces_from_a_file_or_a_directory(tiny_dataset):
    from_file = load_test_faces(tiny_dataset / "test.csv")
    from_dir = load_test_faces(tiny_dataset)
    np.testing.assert_array_equal(from_file.images, from_dir.images)


# ----------------------------------------------------------------------------------------- cache


def test_cache_makes_the_second_load_skip_parsing(tmp_path, rng, monkeypatch):
    path = write_csv(tmp_path / "train.csv", "label,feature", labelled_rows(rng))
    cache = tmp_path / "c"
    first = read_homework_csv(path, cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def refuse(*_):
        raise AssertionError("parsed again despite the cache")

    monkeypatch.setattr(data_mod, "_parse_csv", refuse)
    again = read_homework_csv(path, cache)
    np.testing.assert_array_equal(first.images, again.images)
    # a changed file has another content hash, so it is parsed again
    write_csv(path, "label,feature", labelled_rows(rng))
    with pytest.raises(AssertionError, match="parsed again"):
        read_homework_csv(path, cache)


def test_a_failed_parse_leaves_no_cache_entry(tmp_path, rng):
    rows = labelled_rows(rng)
    rows[3] = "3,1 2 3"
    path = write_csv(tmp_path / "train.csv", "label,feature", rows)
    with pytest.raises(DataError):
        read_homework_csv(path, tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


# ----------------------------------------------------------------------------------------- split


def test_split_is_deterministic_stratified_and_disjoint(tiny_dataset):
    train = load_dataset(tiny_dataset).train
    a_train, a_val = train_val_split(train, 0.2, seed=3)
    b_train, b_val = train_val_split(train, 0.2, seed=3)
    np.testing.assert_array_equal(a_val.ids, b_val.ids)
    assert set(a_train.ids).isdisjoint(a_val.ids) and len(a_train) + len(a_val) == len(train)
    assert len(a_val) == 60
    share_all = np.bincount(train.labels, minlength=7) / len(train)
    share_val = np.bincount(a_val.labels, minlength=7) / len(a_val)
    assert np.abs(share_all - share_val).max() < 0.03
    _, c_val = train_val_split(train, 0.2, seed=4)
    assert set(c_val.ids) != set(a_val.ids)


def test_a_cached_split_is_the_computed_one_and_keyed_by_what_it_depends_on(tiny_dataset, tmp_path):
    train = load_dataset(tiny_dataset).train
    groups = np.arange(len(train)) // 2  # pairs of faces that must stay together
    plain_train, plain_val = train_val_split(train, 0.2, seed=3, groups=groups)
    first = train_val_split(train, 0.2, seed=3, groups=groups, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("split-*.npz"))) == 1
    again = train_val_split(train, 0.2, seed=3, groups=groups, cache_dir=tmp_path)  # read from the cache
    for part, expected in zip((*first, *again), (plain_train, plain_val) * 2):
        np.testing.assert_array_equal(part.ids, expected.ids)
        np.testing.assert_array_equal(part.images, expected.images)
    train_val_split(train, 0.2, seed=4, groups=groups, cache_dir=tmp_path)  # another seed: another entry
    train_val_split(train, 0.2, seed=3, cache_dir=tmp_path)  # no groups: another entry
    assert len(list(tmp_path.glob("split-*.npz"))) == 3


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("rows_edit, message", [
    (lambda rows, rng: rows.__setitem__(4, "2," + " ".join(["7"] * 2300)),
     r"line 6: expected 2304 pixel values.*found 2300"),
    (lambda rows, rng: rows.__setitem__(2, "2," + " ".join(["7"] * 2303 + ["x9"])), r"line 4: pixel 2303 is 'x9'"),
    (lambda rows, rng: rows.__setitem__(7, "2," + " ".join(["7"] * 10 + ["256"] + ["7"] * 2293)),
     r"line 9: pixel 10 is '256'"),
    (lambda rows, rng: rows.__setitem__(7, "2," + " ".join(["7"] * 10 + ["1000"] + ["7"] * 2293)),
     r"line 9: pixel 10 is '1000'"),
    (lambda rows, rng: rows.__setitem__(1, "-3," + " ".join(["7"] * 2304)), r"line 3: label -3 is outside 0..6"),
    (lambda rows, rng: rows.__setitem__(5, "9," + " ".join(["7"] * 2304)), r"line 7: label 9 is outside 0..6"),
    (lambda rows, rng: rows.__setitem__(5, "happy," + " ".join(["7"] * 2304)),
     r"line 7: label 'happy' is not an integer"),
    (lambda rows, rng: rows.__setitem__(5, "1," + " ".join(["7"] * 2304) + ",extra"),
     r"line 7: expected 2 comma-separated"),
])
def test_bad_rows_name_file_line_and_problem(tmp_path, rng, rows_edit, message):
    rows = labelled_rows(rng, 10)
    rows_edit(rows, rng)
    path = write_csv(tmp_path / "train.csv", "label,feature", rows)
    with pytest.raises(DataError, match=message) as err:
        read_homework_csv(path)
    assert str(path) in str(err.value)


def test_line_numbers_count_the_header_and_blank_lines(tmp_path, rng):
    rows = labelled_rows(rng, 6)
    rows[4] = "9," + rows[4].split(",")[1]
    path = tmp_path / "train.csv"
    path.write_text("label,feature\n\n" + "\n".join(rows[:3]) + "\n\n\n" + "\n".join(rows[3:]) + "\n")
    with pytest.raises(DataError, match=r"train.csv, line 9: label 9 is outside"):
        read_homework_csv(path)  # lines: header, blank, 3 rows, 2 blanks, row 4, then row 5 on line 9


def test_an_extra_field_on_the_first_row_is_refused_not_dropped(tmp_path, rng):
    rows = labelled_rows(rng, 3)
    rows[0] += ",extra"
    with pytest.raises(DataError, match=r"line 2: expected 2 comma-separated fields"):
        read_homework_csv(write_csv(tmp_path / "train.csv", "label,feature", rows))


def test_bad_rows_of_the_other_csv_files_name_their_line(tmp_path, rng):
    write_csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage",
              [f"1,{pixel_row(rng)},Training", f"2,{pixel_row(rng)},Validation"])
    with pytest.raises(DataError, match=r"fer2013.csv, line 3: Usage 'Validation', expected Training"):
        load_dataset(tmp_path / "fer2013.csv")
    (tmp_path / "train_img").mkdir()
    _save_gray(tmp_path / "train_img" / "0.png", rng)
    write_csv(tmp_path / "train.csv", "id,label", ["0,1", "face7,2"])
    with pytest.raises(DataError, match=r"train.csv, line 3: id 'face7' is neither an integer nor an image name"):
        load_dataset(tmp_path)
    write_csv(tmp_path / "train.csv", "id,label", ["00000.jpg,1", "1,sad"])
    with pytest.raises(DataError, match=r"train.csv, line 3: label 'sad' is not an integer 0-6"):
        load_dataset(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="file not found"):
        read_homework_csv(tmp_path / "nope.csv")


@pytest.mark.parametrize("content", ["", "\n\n", "label,feature\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "train.csv"
    path.write_text(content)
    with pytest.raises(DataError, match="empty file|no data rows"):
        read_homework_csv(path)


@pytest.mark.parametrize("header, message", [
    ("label", "line 1: columns label, expected label,feature or id,feature"),
    ("label,pixels", "line 1: columns label,pixels, expected label,feature or id,feature"),
    ("emotion,feature,foo", "line 1: columns emotion,feature,foo, expected label,feature or id,feature"),
])
def test_missing_or_unknown_columns(tmp_path, rng, header, message):
    path = write_csv(tmp_path / "train.csv", header, labelled_rows(rng, 2))
    with pytest.raises(DataError, match=message):
        read_homework_csv(path)


def test_duplicate_ids(tmp_path, rng):
    rows = [f"{i},{pixel_row(rng)}" for i in (0, 1, 2, 1)]
    path = write_csv(tmp_path / "test.csv", "id,feature", rows)
    with pytest.raises(DataError, match=r"lines 3 and 5: duplicate id 1"):
        read_homework_csv(path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "train.csv.gz"
    path.write_bytes(gzip.compress(b"label,feature\n")[:-8] + b"garbage!")
    with pytest.raises(DataError, match="not a valid gzip"):
        read_homework_csv(path)


def test_class_without_examples_warns(tmp_path, rng):
    path = write_csv(tmp_path / "train.csv", "label,feature", labelled_rows(rng, labels=[0, 2, 3, 4, 5, 6, 0]))
    with pytest.warns(DataWarning, match="train.csv: no training examples of Disgust"):
        load_dataset(path)


def test_corrupt_and_non_image_files_are_refused(tmp_path, rng):
    (tmp_path / "train" / "Happy").mkdir(parents=True)
    _save_gray(tmp_path / "train" / "Happy" / "good.png", rng)
    (tmp_path / "train" / "Happy" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg: not a readable image"):
        load_dataset(tmp_path)
    (tmp_path / "train" / "Happy" / "broken.jpg").write_text("hello, I am text")
    with pytest.raises(DataError, match=r"broken\.jpg: not a readable image"):
        load_dataset(tmp_path)


def test_colour_or_large_images_are_converted_with_a_warning(tmp_path, rng):
    (tmp_path / "train" / "Sad").mkdir(parents=True)
    _save_gray(tmp_path / "train" / "Sad" / "rgb.png", rng, mode="RGB")
    _save_gray(tmp_path / "train" / "Sad" / "big.png", rng, size=(96, 96))
    with pytest.warns(DataWarning, match="converted"):
        ds = load_dataset(tmp_path)
    assert ds.train.images.shape == (2, 48, 48)


def test_small_images_are_refused(tmp_path, rng):
    (tmp_path / "train" / "Sad").mkdir(parents=True)
    _save_gray(tmp_path / "train" / "Sad" / "tiny.png", rng, size=(20, 20))
    with pytest.raises(DataError, match=r"tiny\.png: image is 20x20, expected 48x48"):
        load_dataset(tmp_path)


def test_unknown_class_folder(tmp_path, rng):
    (tmp_path / "train" / "Bored").mkdir(parents=True)
    _save_gray(tmp_path / "train" / "Bored" / "a.png", rng)
    with pytest.raises(DataError, match="unknown class folder 'Bored'"):
        load_dataset(tmp_path)


def test_image_listed_but_missing(tmp_path, rng):
    (tmp_path / "train_img").mkdir()
    _save_gray(tmp_path / "train_img" / "0.png", rng)
    write_csv(tmp_path / "train.csv", "id,label", ["0,1", "5,2"])
    with pytest.raises(DataError, match=r"line 3: no image for id 5 in .*train_img"):
        load_dataset(tmp_path)


def test_unrecognised_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no dataset found"):
        load_dataset(tmp_path)


def test_faceset_subset_keeps_rows_aligned():
    faces = FaceSet(np.arange(3 * 48 * 48, dtype=np.uint8).reshape(3, 48, 48) % 255, np.array([4, 5, 6]),
                    np.array([10, 11, 12]))
    sub = faces.subset(np.array([2, 0]))
    np.testing.assert_array_equal(sub.labels, [6, 4])
    np.testing.assert_array_equal(sub.ids, [12, 10])


def test_a_single_file_is_a_dataset_of_its_layout(tmp_path, rng):
    fer = write_csv(tmp_path / "fer2013.csv.gz", "emotion,pixels,Usage",
                    [f"{i % 7},{pixel_row(rng)},{'Training' if i < 7 else 'PublicTest'}" for i in range(9)])
    ds = load_dataset(fer)
    assert ds.layout == "fer2013.csv" and (len(ds.train), len(ds.test)) == (7, 2)
    homework = write_csv(tmp_path / "train.csv", "label,feature", labelled_rows(rng, 7))
    ds = load_dataset(homework)
    assert ds.layout == "homework-csv" and len(ds.train) == 7 and ds.test is None
