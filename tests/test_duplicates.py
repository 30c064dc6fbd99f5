"""Repeated faces: exact and near copies are found, unrelated faces are not, and the split keeps copies together."""
from __future__ import annotations

import numpy as np
import pytest

from fer_lib.data.duplicates import cached_duplicates, find_duplicates, near_pairs
from fer_lib.data.layouts import FaceSet, train_val_split


def smooth_faces(n: int, seed: int) -> np.ndarray:
    """Distinct face-like images: smooth random fields (photos are smooth; white noise would be too easy)."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(n, 6, 6))
    big = np.kron(coarse, np.ones((8, 8)))
    kernel = np.ones(5) / 5
    for axis in (1, 2):
        big = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, big)
    big = (big - big.min((1, 2), keepdims=True)) / np.ptp(big, axis=(1, 2), keepdims=True)
    return (30 + 200 * big).astype(np.uint8)


def test_exact_and_near_copies_are_grouped_and_unrelated_faces_are_not():
    faces = smooth_faces(60, seed=0)
    copies = faces.copy()
    copies[10] = faces[3]  # exact copy
    brighter = np.clip(faces[5].astype(int) * 1.1 + 12, 0, 255).astype(np.uint8)
    copies[20] = brighter  # the same photo, brightened and re-encoded
    shifted = np.roll(faces[7], 1, axis=1)
    shifted[:, 0] = faces[7][:, 0]
    copies[30] = shifted  # re-cropped by one pixel
    dup = find_duplicates(copies)
    assert dup.exact_group[10] == dup.exact_group[3] and dup.exact_group[20] != dup.exact_group[5]
    assert dup.group[10] == dup.group[3] and dup.group[20] == dup.group[5] and dup.group[30] == dup.group[7]
    in_groups = np.flatnonzero(np.bincount(dup.group, minlength=len(copies))[dup.group] > 1)
    assert set(in_groups) == {3, 10, 5, 20, 7, 30}, "no unrelated face joins a group"
    summary = dup.summary(np.arange(len(copies)) % 7)
    assert summary["exact_extra_copies"] == 1 and summary["near_or_exact_extra_copies"] == 3
    # labels are index % 7: faces 3 and 10 share label 3, the other two pairs disagree
    assert summary["exact_groups_with_conflicting_labels"] == 0
    assert summary["near_or_exact_groups_with_conflicting_labels"] == 2


def test_test_faces_are_matched_to_their_training_copy_and_kind():
    train = smooth_faces(40, seed=1)
    test = smooth_faces(8, seed=2)
    test[2] = train[11]
    test[5] = np.clip(train[17].astype(int) + 9, 0, 255).astype(np.uint8)
    test[6] = 0
    train[0] = 0  # a blank face on both sides: constant images correlate with nothing, so matched by bytes
    dup = find_duplicates(train, test)
    assert dup.test_copy.tolist() == ["", "", "exact", "", "", "near", "exact", ""]
    assert dup.summary()["test_exact_copies"] == 2 and dup.summary()["test_near_copies"] == 1


def test_near_pairs_need_both_the_key_and_the_pixel_check():
    a = smooth_faces(5, seed=3)
    b = a.copy()
    b[1] = 255 - a[1]  # a negative: the same layout, anti-correlated, is no copy
    pairs = near_pairs(a, b)
    assert sorted(map(tuple, pairs[:, :2].astype(int))) == [(0, 0), (2, 2), (3, 3), (4, 4)]


def test_the_grouped_split_keeps_every_group_on_one_side():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(150), rng.integers(1, 4, 150))  # 150 photos, 1-3 copies each
    labels = (groups % 7).astype(np.int64)
    faces = FaceSet(np.zeros((len(groups), 48, 48), np.uint8), labels, np.arange(len(groups)))
    faces.images[:, 0, 0] = np.arange(len(groups)) % 256
    train, val = train_val_split(faces, 0.2, seed=0, groups=groups)
    assert not set(groups[train.ids]) & set(groups[val.ids]), "no group on both sides"
    assert 0.12 < len(val) / len(faces) < 0.28
    assert set(val.labels) == set(range(7)), "stratified: every class in validation"
    again, _ = train_val_split(faces, 0.2, seed=0, groups=groups)
    np.testing.assert_array_equal(again.ids, train.ids)
    # the random split of the same faces does put copies on both sides: the reason for the grouped one
    rtrain, rval = train_val_split(faces, 0.2, seed=0)
    assert set(groups[rtrain.ids]) & set(groups[rval.ids])


def test_duplicates_are_cached_by_content(tmp_path, monkeypatch):
    import fer_lib.data.duplicates as dmod

    faces = smooth_faces(20, seed=5)
    first = cached_duplicates(faces, cache_dir=tmp_path)
    monkeypatch.setattr(dmod, "find_duplicates", lambda *a: pytest.fail("recomputed despite the cache"))
    np.testing.assert_array_equal(cached_duplicates(faces, cache_dir=tmp_path).group, first.group)
    with pytest.raises(pytest.fail.Exception):
        cached_duplicates(faces[::-1].copy(), cache_dir=tmp_path)  # other faces: computed anew
