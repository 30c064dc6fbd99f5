"""FER2013's repeated faces: exact pixel copies and near-copies, inside the training file and across to the test.

FER2013 was collected by image search, so one photo often appears more than once (identical pixels, or re-encoded,
re-cropped, brightened copies): a split that ignores this validates on copies of training faces, recognised rather
than generalised to. Near-copies are found by a cheap key, the correlation of 12x12 block-mean thumbnails, then
confirmed on the full pixels (a copy keeps its fine detail). Copies form groups, which the split keeps on one side.
This is not the shipped model's notion of the same face (data.face_keys, without pixels): counted with its keys,
FER2013's training file has 1,291 copy groups (not 1,548) and 851 test faces with a training copy (not 951).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_lib.core.io import array_sha256
from fer_lib.data.layouts import cached_arrays

THUMB = 12  # thumbnail side: 48 / 4, each thumbnail pixel the mean of a 4x4 block
NEAR_KEY_MIN = 0.97  # thumbnail correlation that makes a pair a candidate
# full-resolution correlation that confirms it: pairs at 0.80-0.88 were still one photo, re-cropped or watermarked
NEAR_PIXEL_MIN = 0.80
_CHUNK = 2048  # rows of the similarity matrix computed at once (2048 x 28,555 float32 = 230 MB)
_FORMAT = 3  # bump when the cached result changes meaning


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows mean-centred and scaled to unit length (constant rows stay zero: they correlate with nothing)."""
    x = x.reshape(len(x), int(np.prod(x.shape[1:]))).astype(np.float32)  # spelled out: no face may be given
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-3)


def _first_with_same_pixels(images: np.ndarray) -> np.ndarray:
    """(N,) int64: the index of the first face with the same pixels as each face."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))  # rows as single byte strings: 5x faster than axis=0
    _, first, inverse = np.unique(flat.view(f"V{flat.shape[1]}").ravel(), return_index=True, return_inverse=True)
    return first[inverse.ravel()].astype(np.int64)


def near_pairs(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """(K, 3) float array of (i, j, pixel correlation) for near-copies (exact ones included) between ``a[i]`` and
    ``b[j]``; with ``b`` None, within ``a`` (i < j)."""
    thumbs_a, thumbs_b = (_unit_rows(x.reshape(len(x), THUMB, 4, THUMB, 4).astype(np.float32).mean((2, 4)))
                          for x in (a, a if b is None else b))
    found = [np.zeros((0, 3))]
    for start in range(0, len(a), _CHUNK):
        i, j = np.nonzero(thumbs_a[start:start + _CHUNK] @ thumbs_b.T >= NEAR_KEY_MIN)
        i += start
        if b is None:
            i, j = i[i < j], j[i < j]
        corr = np.einsum("ij,ij->i", _unit_rows(a[i]), _unit_rows((a if b is None else b)[j]))  # the full pixels
        found.append(np.stack([i, j, corr], axis=1)[corr >= NEAR_PIXEL_MIN])
    return np.concatenate(found)


@dataclass
class Duplicates:
    """What is repeated in a training set (and, when a test set was given, between it and training)."""

    exact_group: np.ndarray  # (N_train,) group id under exact copies only
    group: np.ndarray  # (N_train,) group id under exact and near copies: what the split keeps together
    test_copy: np.ndarray | None = None  # (N_test,) "exact", "near" or "" for each test face

    def summary(self, labels: np.ndarray | None = None) -> dict:
        """Counts: copy groups, extra copies, groups whose copies disagree on the label, test copies."""
        out = {}
        for name, group in (("exact", self.exact_group), ("near_or_exact", self.group)):
            sizes = np.bincount(group)[np.bincount(group) > 1]  # the groups of two faces or more
            out |= {f"{name}_groups": len(sizes), f"{name}_extra_copies": int(sizes.sum()) - len(sizes)}
            if labels is not None:
                labels_per_group = np.bincount(np.unique(np.stack([group, labels], 1), axis=0)[:, 0])
                out[f"{name}_groups_with_conflicting_labels"] = int((labels_per_group > 1).sum())
        if self.test_copy is not None:
            out |= {"test_faces": len(self.test_copy), "test_exact_copies": int((self.test_copy == "exact").sum()),
                    "test_near_copies": int((self.test_copy == "near").sum())}
        return out


def find_duplicates(train_images: np.ndarray, test_images: np.ndarray | None = None) -> Duplicates:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(train_images)
    exact = _first_with_same_pixels(train_images)
    links = np.concatenate([np.stack([np.arange(n), exact], 1), near_pairs(train_images)[:, :2].astype(np.int64)])
    _, component = connected_components(coo_matrix((np.ones(len(links)), links.T), shape=(n, n)), directed=False)
    group = np.unique(component, return_index=True)[1][component]  # a group is named by its first face
    if test_images is None:
        return Duplicates(exact, group)
    # exact copies by their bytes (constant faces too, which correlate with nothing), then near ones
    exact_test = _first_with_same_pixels(np.concatenate([train_images, test_images]))[n:] < n
    near_test = np.isin(np.arange(len(test_images)), near_pairs(test_images, train_images)[:, 0])
    return Duplicates(exact, group, np.where(exact_test, "exact", np.where(near_test, "near", "")))


def cached_duplicates(train_images: np.ndarray, test_images: np.ndarray | None = None,
                      cache_dir: Path | None = None) -> Duplicates:
    """:func:`find_duplicates`, stored under ``cache_dir`` by the hash of the pixels (9-20 s on 2 cores for
    FER2013; then instant)."""
    settings = np.frombuffer(json.dumps([THUMB, NEAR_KEY_MIN, NEAR_PIXEL_MIN, _FORMAT]).encode(), dtype=np.uint8)
    parts = [train_images] if test_images is None else [train_images, np.frombuffer(b"test", np.uint8), test_images]
    entry = cache_dir and Path(cache_dir) / f"duplicates-{array_sha256(*parts, settings)[:16]}.npz"
    return Duplicates(**cached_arrays(entry, lambda: {k: v for k, v in vars(find_duplicates(train_images, test_images))
                                                      .items() if v is not None}))
