"""FER2013's repeated faces: exact pixel copies and near-copies, inside the training file and across to the test.

FER2013 was collected by image search, so the same photo often appears more than once (identical pixels, or
re-encoded / re-cropped / brightened copies). A validation split that ignores this puts copies of training
faces into validation, where the model recognises them rather than generalises.

  exact copy   the same 2,304 bytes (a hash of the pixels)
  near-copy    a cheap perceptual key first: the 12x12 block-mean thumbnail, mean-centred and scaled to unit
               length, so that a dot product is the Pearson correlation of two thumbnails; pairs with
               correlation >= NEAR_KEY_MIN are candidates, and a candidate is kept when the full 48x48 pixels
               also correlate >= NEAR_PIXEL_MIN (the verification: two different faces can share a blurry
               thumbnail, a re-encoded copy keeps its fine detail).
Copies are joined into groups (connected components), which the validation split keeps on one side.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_lib.core.io import array_sha256, atomic_savez

THUMB = 12  # thumbnail side: 48 / 4, each thumbnail pixel the mean of a 4x4 block
NEAR_KEY_MIN = 0.97  # thumbnail correlation that makes a pair a candidate
# full-resolution correlation that confirms it: pairs at 0.80-0.88 were still one photo, re-cropped or watermarked
NEAR_PIXEL_MIN = 0.80
_CHUNK = 2048  # rows of the similarity matrix computed at once (2048 x 28,555 float32 = 230 MB)
_FORMAT = 1  # bump when the cached result changes meaning


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows mean-centred and scaled to unit length (constant rows stay zero: they correlate with nothing)."""
    x = x.reshape(len(x), -1).astype(np.float32)
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-3)


def thumbnails(images: np.ndarray) -> np.ndarray:
    """(N, 144) unit-length 12x12 block-mean thumbnails: the perceptual key."""
    n, h, w = images.shape
    blocks = images.reshape(n, THUMB, h // THUMB, THUMB, w // THUMB).astype(np.float32).mean((2, 4))
    return _unit_rows(blocks)


def exact_keys(images: np.ndarray) -> np.ndarray:
    """(N,) int64: equal keys <=> identical pixels (the index of the first face with those pixels)."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    _, first, inverse = np.unique(flat.view(np.dtype((np.void, flat.shape[1]))).ravel(), return_index=True,
                                  return_inverse=True)
    return first[inverse.ravel()].astype(np.int64)


def near_pairs(a: np.ndarray, b: np.ndarray | None = None, key_min: float = NEAR_KEY_MIN,
               pixel_min: float = NEAR_PIXEL_MIN) -> np.ndarray:
    """(K, 3) float array of (i, j, pixel correlation) for near-copies between ``a[i]`` and ``b[j]``.

    With ``b`` None the pairs are within ``a`` (i < j). Exact copies are included (correlation 1).
    """
    within = b is None
    b = a if within else b
    ka, kb = thumbnails(a), thumbnails(b)
    found = []
    for start in range(0, len(ka), _CHUNK):
        sim = ka[start:start + _CHUNK] @ kb.T
        i, j = np.nonzero(sim >= key_min)
        i = i + start
        if within:
            keep = i < j
            i, j = i[keep], j[keep]
        if len(i):
            # verification on the full pixels, only for the candidates
            corr = np.einsum("ij,ij->i", _unit_rows(a[i]), _unit_rows(b[j]))
            ok = corr >= pixel_min
            found.append(np.stack([i[ok], j[ok], corr[ok]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 3))


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """(n,) group id of each item given linked pairs: the smallest index of its connected component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    return first[label]


@dataclass
class Duplicates:
    """What is repeated in a training set (and, when a test set was given, between it and training)."""

    exact_group: np.ndarray  # (N_train,) group id under exact copies only
    group: np.ndarray  # (N_train,) group id under exact and near copies: what the split keeps together
    test_copy: np.ndarray | None  # (N_test,) "exact", "near" or "" for each test face
    test_match: np.ndarray | None  # (N_test,) index of a training face it copies, -1 if none

    def summary(self, labels: np.ndarray | None = None) -> dict:
        """Counts, as data: copy groups, extra copies, groups whose copies disagree on the label, test copies."""
        out = {}
        for name, group in (("exact", self.exact_group), ("near_or_exact", self.group)):
            ids, sizes = np.unique(group, return_counts=True)
            out[f"{name}_groups"] = int((sizes > 1).sum())
            out[f"{name}_extra_copies"] = int((sizes - 1).sum())
            out[f"{name}_faces_in_groups"] = int(sizes[sizes > 1].sum())
            if labels is not None:
                n_labels = np.zeros(len(group), dtype=np.int64)
                for g in ids[sizes > 1]:
                    n_labels[g] = len(np.unique(labels[group == g]))
                out[f"{name}_groups_with_conflicting_labels"] = int((n_labels > 1).sum())
        if self.test_copy is not None:
            out["test_faces"] = int(len(self.test_copy))
            out["test_exact_copies"] = int((self.test_copy == "exact").sum())
            out["test_near_copies"] = int((self.test_copy == "near").sum())
        return out


def find_duplicates(train_images: np.ndarray, test_images: np.ndarray | None = None) -> Duplicates:
    exact = exact_keys(train_images)
    exact_pairs = np.stack([np.arange(len(exact)), exact], axis=1)
    near = near_pairs(train_images)[:, :2]
    group = _components(len(train_images), np.concatenate([exact_pairs, near]))
    test_copy = test_match = None
    if test_images is not None:
        test_copy = np.full(len(test_images), "", dtype=object)
        test_match = np.full(len(test_images), -1, dtype=np.int64)
        pairs = near_pairs(test_images, train_images)
        # best match per test face; a pixel-identical one counts as exact
        order = np.argsort(-pairs[:, 2], kind="stable")
        for i, j, corr in pairs[order]:
            i, j = int(i), int(j)
            if test_match[i] < 0:
                test_match[i], test_copy[i] = j, "near"
        matched = test_match >= 0
        idx = np.flatnonzero(matched)
        # flattened to (faces, pixels) with the pixel count spelled out: a test set with no copy at all selects
        # nothing, and an empty selection cannot infer its row length
        pixels = test_images[0].size if len(test_images) else 0
        same = (test_images[idx].reshape(len(idx), pixels) ==
                train_images[test_match[idx]].reshape(len(idx), pixels)).all(1)
        test_copy[idx[same]] = "exact"
        # an exact copy the thumbnail key missed cannot exist (identical pixels correlate 1), except for constant
        # faces, which correlate with nothing: match those by bytes
        blank = ~matched & (test_images.reshape(len(test_images), pixels).std(1) < 1e-3)
        if blank.any():
            lookup = {bytes(img.tobytes()): k for k, img in enumerate(train_images)
                      if img.std() < 1e-3}
            for i in np.flatnonzero(blank):
                k = lookup.get(bytes(test_images[i].tobytes()))
                if k is not None:
                    test_match[i], test_copy[i] = k, "exact"
        test_copy = test_copy.astype(str)
    return Duplicates(exact, group, test_copy, test_match)


def cached_duplicates(train_images: np.ndarray, test_images: np.ndarray | None = None,
                      cache_dir: Path | None = None) -> Duplicates:
    """:func:`find_duplicates`, stored under ``cache_dir`` by the hash of the pixels (about a minute on 2 cores
    for FER2013; then instant)."""
    if cache_dir is None:
        return find_duplicates(train_images, test_images)
    settings = np.frombuffer(json.dumps([THUMB, NEAR_KEY_MIN, NEAR_PIXEL_MIN, _FORMAT]).encode(), dtype=np.uint8)
    parts = [train_images] if test_images is None else [train_images, np.frombuffer(b"test", np.uint8), test_images]
    entry = Path(cache_dir) / f"duplicates-{array_sha256(*parts, settings)[:16]}.npz"
    if entry.exists():
        with np.load(entry) as z:
            has_test = bool(z["has_test"])
            return Duplicates(z["exact_group"], z["group"], z["test_copy"] if has_test else None,
                              z["test_match"] if has_test else None)
    dup = find_duplicates(train_images, test_images)

    atomic_savez(entry, exact_group=dup.exact_group, group=dup.group, has_test=dup.test_copy is not None,
                 test_copy=dup.test_copy if dup.test_copy is not None else np.zeros(0, dtype=str),
                 test_match=dup.test_match if dup.test_match is not None else np.zeros(0, dtype=np.int64))
    return dup
