"""dlib's face detector and 68-point landmarks, for FER2013 faces (Q4, Q5) and photos (classify).

The landmark model is the iBUG 300-W shape predictor inside the ``face-recognition-models`` package (nothing is
downloaded at run time); like its training data it is licensed for non-commercial research only (the README says so).

Points (0-based, the iBUG 68 scheme): 0-16 jaw line, 17-21 / 22-26 the brows (subject's right / left),
27-35 the nose, 36-41 / 42-47 the eyes, 48-67 the mouth (60-67 its inner lip).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from fer_lib import ConfigError

UPSAMPLE = 4  # FER2013 faces are 48 px: dlib's detector and predictor expect faces of 80 px and more
JAW, RIGHT_BROW, LEFT_BROW = slice(0, 17), slice(17, 22), slice(22, 27)
NOSE, RIGHT_EYE, LEFT_EYE, MOUTH, INNER_LIP = slice(27, 36), slice(36, 42), slice(42, 48), slice(48, 68), slice(60, 68)


@lru_cache(maxsize=1)
def shape_predictor():
    """The 68-point model inside the installed ``face_recognition_models`` package, found without importing it (its
    ``__init__`` needs ``pkg_resources``, which current setuptools no longer provides)."""
    import dlib

    spec = importlib.util.find_spec("face_recognition_models")
    path = Path(list(spec.submodule_search_locations or [""])[0] if spec else "") / "models" / \
        "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise ConfigError(f"{path}: no landmark model (pip install -r requirements.txt for face-recognition-models)")
    return dlib.shape_predictor(str(path))


@lru_cache(maxsize=1)
def face_detector():
    """dlib's HOG + linear SVM frontal-face detector (no model file)."""
    import dlib

    return dlib.get_frontal_face_detector()


def landmarks_in_box(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(68, 2) float (x, y) landmarks of the face in ``box`` = (left, top, right, bottom) of a uint8 image."""
    import dlib

    shape = shape_predictor()(np.ascontiguousarray(gray, dtype=np.uint8), dlib.rectangle(*map(int, box)))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def detect_faces(gray: np.ndarray, upsample: int = 0) -> list[tuple[tuple[int, int, int, int], float]]:
    """Face boxes (left, top, right, bottom) and detector scores in a uint8 grayscale image."""
    rects, scores, _ = face_detector().run(np.ascontiguousarray(gray, dtype=np.uint8), upsample, 0.0)
    return [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]


def face_landmarks(images: np.ndarray, upsample: int = UPSAMPLE, cache_dir: Path | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks of FER2013 faces: ((N, 68, 2) float in the 48-px frame, (N,) bool "the detector found the face").
    Each face is upsampled ``upsample`` times (bicubic); the box is the detector's best one, else the whole frame
    (FER2013 crops are face-centred: the predictor still lands on the eyes, nose and mouth). About 12 ms a face: with
    ``cache_dir``, each face's fit is stored by the hash of its pixels (one file for every page), made once."""
    from PIL import Image

    images = np.ascontiguousarray(images, dtype=np.uint8)
    if cache_dir is not None:
        return _cached(images, upsample, Path(cache_dir) / f"landmarks-{upsample}x.npz")
    out = np.zeros((len(images), 68, 2), dtype=np.float32)
    found = np.zeros(len(images), dtype=bool)
    for i, face in enumerate(images):
        side = face.shape[0] * upsample
        big = np.asarray(Image.fromarray(face).resize((side, side), Image.BICUBIC))
        boxes = detect_faces(big)
        found[i] = bool(boxes)
        box = max(boxes, key=lambda b: b[1])[0] if boxes else (0, 0, side - 1, side - 1)
        # pixel centres: a point at x in the big image is at (x + 0.5) / upsample - 0.5 in the 48-px one
        out[i] = (landmarks_in_box(big, box) + 0.5) / upsample - 0.5
    return out, found


def _cached(images: np.ndarray, upsample: int, entry: Path) -> tuple[np.ndarray, np.ndarray]:
    """face_landmarks of the faces not yet in ``entry`` (keys: 16-byte BLAKE2b of the pixels), added to it (a page
    storing at the same time may keep its own faces instead: the others are fitted again next time)."""
    from fer_lib.core.io import atomic_savez

    keys = np.array([hashlib.blake2b(f.tobytes(), digest_size=16).digest() for f in images], dtype="S16")
    with np.load(entry) if entry.exists() else contextlib.nullcontext({}) as z:
        have = {k: z[k] for k in z} or {"keys": np.zeros(0, "S16"), "points": np.zeros((0, 68, 2)), "found": []}
    new, first = np.unique(keys[~np.isin(keys, have["keys"])], return_index=True)
    if len(new):
        fits = face_landmarks(images[~np.isin(keys, have["keys"])][first], upsample)
        atomic_savez(entry, **(have := {k: np.concatenate([have[k], v]) for k, v in zip(have, (new, *fits))}))
    at = np.argsort(have["keys"])[np.searchsorted(have["keys"], keys, sorter=np.argsort(have["keys"]))]
    return have["points"][at].astype(np.float32), have["found"][at].astype(bool)
