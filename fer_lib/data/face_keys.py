"""Face identity by pixel keys: which faces a model was trained and validated on, recognised in any copy of FER2013.

Two keys per face, never the pixels: 32 bits of a BLAKE2b hash of its bytes, and 64 bits that survive JPEG or PNG
re-encoding (a copy as image files, reordered, with faces added or missing, still matches): the signs of 64 DCT
coefficients against their medians over the model's training faces (README, "Repeated faces", for the thresholds).
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
# the key's band: JPEG's zigzag order of a 16x16 block (low frequencies first), past the ten lowest
_BAND = np.array(sorted(np.ndindex(16, 16), key=lambda rc: (sum(rc), rc[0] if sum(rc) % 2 else rc[1]))[10:74])


def exact_keys(images: np.ndarray) -> np.ndarray:
    """(N,) uint32: 32 bits of BLAKE2b over each face's bytes (equal pixels <=> equal key, barring a 2^-32 chance)."""
    return np.array([int.from_bytes(hashlib.blake2b(face.tobytes(), digest_size=4).digest(), "little")
                     for face in images.astype(np.uint8)], dtype=np.uint32)


def _dct_band(images: np.ndarray) -> np.ndarray:
    from scipy.fft import dctn

    return dctn(images.reshape(len(images), 48, 48).astype(np.float32), axes=(1, 2), norm="ortho")[:, *_BAND.T]


def perceptual_keys(images: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) uint64 keys, bit i set when the face's i-th band coefficient is above ``thresholds[i]``, and (N,) uint64
    masks of the bits whose coefficient is at least ``MARGIN`` from its threshold (others may flip in a JPEG)."""
    band = _dct_band(images)
    bit = np.uint64(1) << np.arange(64, dtype=np.uint64)
    return ((band > thresholds) * bit).sum(1, dtype=np.uint64), ((abs(band - thresholds) >= MARGIN) * bit).sum(
        1, dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray, mask=np.uint64(2**64 - 1)) -> np.ndarray:
    """Bits that differ between perceptual keys, among those set in ``mask`` (broadcasting)."""
    return np.bitwise_count(np.bitwise_and(np.bitwise_xor(a, b), mask)).astype(np.int32)


def nearest_distance(queries: np.ndarray, known: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """For each query key, its Hamming distance over its ``masks`` to the nearest known key (blockwise)."""
    return np.concatenate([np.zeros(0, np.int32)] + [
        hamming(queries[at:at + _BLOCK, None], known, masks[at:at + _BLOCK, None]).min(axis=1)
        for at in range(0, len(queries), _BLOCK)])


@dataclass(frozen=True)
class FaceKeys:
    """The keys of a model's training and validation faces, in the order the run used them."""

    thresholds: np.ndarray  # (64,) float32: each band coefficient's median over the training faces
    train_exact: np.ndarray  # (N_train,) uint32
    train_perceptual: np.ndarray  # (N_train,) uint64
    val_exact: np.ndarray
    val_perceptual: np.ndarray

    @classmethod
    def of(cls, train_images: np.ndarray, val_images: np.ndarray) -> "FaceKeys":
        thresholds = np.median(_dct_band(train_images), axis=0).astype(np.float32)
        return cls(thresholds, exact_keys(train_images), perceptual_keys(train_images, thresholds)[0],
                   exact_keys(val_images), perceptual_keys(val_images, thresholds)[0])

    def save(self, folder: Path) -> None:
        atomic_savez(Path(folder) / KEYS_FILE, **vars(self))

    @classmethod
    def load(cls, folder: Path) -> "FaceKeys":
        with np.load(Path(folder) / KEYS_FILE) as z:
            return cls(**{name: z[name] for name in cls.__dataclass_fields__})


NEW, TRAIN, VAL = 0, 1, 2  # what a user's face is to the model
SIDE_NAMES = ("new", "train", "val")


@dataclass(frozen=True)
class FaceMatch:
    """Each of a user's faces matched against a model's faces: which side it is on and how it matched."""

    side: np.ndarray  # (N,) NEW, TRAIN or VAL
    exact: np.ndarray  # (N,) bool: identical pixels (exact key and perceptual key agree)
    distance: np.ndarray  # (N,) Hamming distance to the nearest known face

    @property
    def counts(self) -> dict[str, int]:
        found = self.side != NEW
        return {"exact": int((found & self.exact).sum()), "near": int((found & ~self.exact).sum()),
                "new": int((~found).sum())}

    @property
    def found_share(self) -> float:
        return float((self.side != NEW).mean())


def match_faces(images: np.ndarray, keys: FaceKeys) -> FaceMatch:
    """Match a user's faces to a model's: nearest perceptual key among its training and validation faces; a face
    farther than ``NEAR_BITS`` from both is new. A face equally near both sides counts as validation only when its
    exact key says so (copies of a face are kept on one side by the grouped split, so ties are rare)."""
    exact = exact_keys(images)
    perceptual, steady = perceptual_keys(images, keys.thresholds)
    d_train = nearest_distance(perceptual, keys.train_perceptual, steady)
    d_val = nearest_distance(perceptual, keys.val_perceptual, steady)
    # identical pixels: the exact key is among the side's (the nearest perceptual key may be another copy's)
    exact_train = np.isin(exact, keys.train_exact) & (d_train == 0)
    exact_val = np.isin(exact, keys.val_exact) & (d_val == 0)
    to_val = exact_val | ((d_val < d_train) & ~exact_train)
    distance = np.where(to_val, d_val, d_train)
    side = np.where(distance > NEAR_BITS, NEW, np.where(to_val, VAL, TRAIN))
    return FaceMatch(side=side, exact=np.where(to_val, exact_val, exact_train) & (side != NEW), distance=distance)
