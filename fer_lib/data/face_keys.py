"""Face identity by pixel keys: which faces a model was trained and validated on, recognised in any copy of FER2013.

Two keys per face, never the pixels: an exact key (32 bits of a BLAKE2b hash of the 48x48 bytes) and a 64-bit
perceptual key that survives JPEG or PNG re-encoding, so a copy stored as image files, reordered, with faces added
or missing, still matches. The perceptual key is 64 low-frequency DCT coefficients of the face (the 11th to 74th in
zigzag order: the lowest ten describe the shape every face shares), each compared with its median over the model's
training faces (stored with the keys, so every bit splits the faces in half). A face "matches" a known face when
their perceptual keys differ in at most ``NEAR_BITS`` bits; the match is "exact" when the exact keys agree too.
Measured on FER2013's 28,555 training faces (README, "Repeated faces"): after JPEG
re-encoding at quality 75, 85 or 95 every key stays within 1 bit of its original (99.9%, 99.996% and 100% exactly
equal); 202 faces (0.7%) have a face of another copy group (data.duplicates) within 4 bits, and the 16 least alike of
those pairs were each one photo re-edited (a caption, a watermark, contrast), while at 7-8 bits different people join.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_lib.core.io import atomic_savez

KEYS_FILE = "faces.npz"  # beside a run's weights: the keys of its training and validation faces
NEAR_BITS = 4  # the largest Hamming distance between perceptual keys that still counts as the same face
# a query's bit whose coefficient lies this close to its threshold is left out of the distance: JPEG at quality 75
# moves a band coefficient by 1.4 (median) to 5.9 (99th percentile), measured on FER2013 faces
MARGIN = 6.0
_BLOCK = 512  # user faces compared with every known face at once (512 x 28,555 uint64 = 117 MB)


def exact_keys(images: np.ndarray) -> np.ndarray:
    """(N,) uint32: 32 bits of BLAKE2b over each face's bytes (equal pixels <=> equal key, barring a 2^-32 chance)."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1), dtype=np.uint8)
    return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=4).digest(), "little")
                     for row in flat], dtype=np.uint32)


def _zigzag(n: int) -> np.ndarray:
    """(row, col) indices of an n x n block in JPEG's zigzag order (low frequencies first)."""
    cells = [(r, c) for r in range(n) for c in range(n)]
    cells.sort(key=lambda rc: (rc[0] + rc[1], rc[0] if (rc[0] + rc[1]) % 2 else rc[1]))
    return np.array(cells)


_BAND = _zigzag(16)[10:74]  # 64 low frequencies, past the ten lowest (and the mean) that all faces share
_BITS = np.uint64(1) << np.arange(64, dtype=np.uint64)
_ALL_BITS = np.uint64(2**64 - 1)


def dct_band(images: np.ndarray) -> np.ndarray:
    """(N, 64) float32: the faces' DCT coefficients in the key's band."""
    from scipy.fft import dctn

    x = images.reshape(len(images), 48, 48).astype(np.float32)
    return dctn(x, axes=(1, 2), norm="ortho")[:, _BAND[:, 0], _BAND[:, 1]]


def key_thresholds(images: np.ndarray) -> np.ndarray:
    """(64,) float32: each band coefficient's median over ``images`` (a model's training faces)."""
    return np.median(dct_band(images), axis=0).astype(np.float32)


def perceptual_keys(images: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N,) uint64: bit i is set when the face's i-th band coefficient is above ``thresholds[i]``."""
    return ((dct_band(images) > thresholds).astype(np.uint64) * _BITS).sum(axis=1, dtype=np.uint64)


def reliable_bits(images: np.ndarray, thresholds: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """(N,) uint64: the bits of each face's perceptual key whose coefficient is at least ``margin`` from its
    threshold (the others may flip when the face is re-encoded)."""
    steady = np.abs(dct_band(images) - thresholds) >= margin
    return (steady.astype(np.uint64) * _BITS).sum(axis=1, dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray, mask=_ALL_BITS) -> np.ndarray:
    """Bits that differ between perceptual keys, among those set in ``mask`` (broadcasting)."""
    return np.bitwise_count(np.bitwise_and(np.bitwise_xor(a, b), mask)).astype(np.int32)


def nearest(queries: np.ndarray, known: np.ndarray, masks: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """For each query key, the index of the nearest known key and its Hamming distance over the query's ``masks``
    (all bits when None); an exact comparison with every known key, blockwise."""
    index, distance = np.zeros(len(queries), dtype=np.int64), np.full(len(queries), 65, dtype=np.int32)
    masks = np.full(len(queries), _ALL_BITS, dtype=np.uint64) if masks is None else masks
    for start in range(0, len(queries) if len(known) else 0, _BLOCK):
        d = hamming(queries[start:start + _BLOCK, None], known[None, :], masks[start:start + _BLOCK, None])
        index[start:start + _BLOCK] = d.argmin(axis=1)
        distance[start:start + _BLOCK] = d.min(axis=1)
    return index, distance


@dataclass(frozen=True)
class FaceKeys:
    """The keys of a model's training and validation faces, in the order the run used them."""

    thresholds: np.ndarray  # (64,) float32: the perceptual key's per-coefficient medians
    train_exact: np.ndarray  # (N_train,) uint32
    train_perceptual: np.ndarray  # (N_train,) uint64
    val_exact: np.ndarray
    val_perceptual: np.ndarray

    @classmethod
    def of(cls, train_images: np.ndarray, val_images: np.ndarray) -> "FaceKeys":
        thresholds = key_thresholds(train_images)
        return cls(thresholds, exact_keys(train_images), perceptual_keys(train_images, thresholds),
                   exact_keys(val_images), perceptual_keys(val_images, thresholds))

    def save(self, folder: Path) -> Path:
        path = Path(folder) / KEYS_FILE
        atomic_savez(path, **{name: getattr(self, name) for name in self.__dataclass_fields__})
        return path

    @classmethod
    def load(cls, folder: Path) -> "FaceKeys | None":
        path = Path(folder) / KEYS_FILE
        if not path.exists():
            return None
        with np.load(path) as z:
            return cls(**{name: z[name] for name in cls.__dataclass_fields__})


# what a user's face is to the model
NEW, TRAIN, VAL = 0, 1, 2
SIDE_NAMES = ("new", "train", "val")


@dataclass(frozen=True)
class FaceMatch:
    """Each of a user's faces matched against a model's faces: which side it is on and how it matched."""

    side: np.ndarray  # (N,) NEW, TRAIN or VAL
    exact: np.ndarray  # (N,) bool: identical pixels (exact key and perceptual key agree)
    distance: np.ndarray  # (N,) Hamming distance to the nearest known face (65 when there is none)

    @property
    def counts(self) -> dict[str, int]:
        """{"exact": n, "near": n, "new": n} over all faces."""
        found = self.side != NEW
        return {"exact": int((found & self.exact).sum()), "near": int((found & ~self.exact).sum()),
                "new": int((~found).sum())}

    @property
    def found_share(self) -> float:
        return float((self.side != NEW).mean()) if len(self.side) else 0.0


def match_faces(images: np.ndarray, keys: FaceKeys, near_bits: int = NEAR_BITS) -> FaceMatch:
    """Match a user's faces to a model's: nearest perceptual key among its training and validation faces; a face
    farther than ``near_bits`` from both is new. A face equally near both sides counts as validation only when its
    exact key says so (copies of a face are kept on one side by the grouped split, so ties are rare)."""
    exact = exact_keys(images)
    perceptual = perceptual_keys(images, keys.thresholds)
    steady = reliable_bits(images, keys.thresholds)
    _, d_train = nearest(perceptual, keys.train_perceptual, steady)
    _, d_val = nearest(perceptual, keys.val_perceptual, steady)
    # identical pixels: the exact key is among the side's (the nearest perceptual key may be another copy's)
    exact_train = np.isin(exact, keys.train_exact) & (d_train == 0)
    exact_val = np.isin(exact, keys.val_exact) & (d_val == 0)
    to_val = exact_val | ((d_val < d_train) & ~exact_train)
    distance = np.where(to_val, d_val, d_train)
    side = np.where(distance > near_bits, NEW, np.where(to_val, VAL, TRAIN))
    return FaceMatch(side=side, exact=np.where(to_val, exact_val, exact_train) & (side != NEW), distance=distance)
