"""Per-face attributes from 68-point landmarks and pixels: mouth and eye opening, brow height, head yaw, brightness,
contrast.

  mouth opening  inner-lip height (mean gap of the three upper/lower inner-lip point pairs) / face width
                 (jaw point 0 to jaw point 16): 0 for a closed mouth, about 0.3 for a wide-open one
  eye opening    the eye aspect ratio (the two vertical lid gaps over twice the corner-to-corner width),
                 averaged over both eyes: about 0.3 for an open eye, under 0.15 for a closed one
  brow height    distance from each brow's centre (its five points) to its eye's centre (six points) / face width,
                 averaged over both sides: higher for raised brows (surprise), lower for lowered ones (anger)
  head yaw       (nose tip to the right jaw end - nose tip to the left jaw end) / their sum, in [-1, 1]: 0 when
                 the nose sits midway between the jaw ends (frontal), its sign tells which way the head turns
  head turn      |head yaw|: how far the head turns, either way
  brightness     mean gray level / 255
  contrast       standard deviation of the gray levels / 255
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from fer_lib.core.io import atomic_write
from fer_lib.data.landmarks import INNER_LIP, JAW, LEFT_BROW, LEFT_EYE, RIGHT_BROW, RIGHT_EYE

ATTRIBUTES = {"mouth_open": "mouth opening", "eye_open": "eye opening", "brow_height": "brow height",
              "yaw": "head yaw", "head_turn": "head turn", "brightness": "brightness", "contrast": "contrast"}
FROM_LANDMARKS = ("mouth_open", "eye_open", "brow_height", "yaw", "head_turn")  # missing where no face was found
_FORMAT = 2  # bump when the cached attributes change meaning


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1)


def eye_aspect_ratio(eye: np.ndarray) -> np.ndarray:
    """(N,) for eye points (N, 6, 2) in iBUG order (corner, two upper lid points, corner, two lower lid points)."""
    return (_dist(eye[:, 1], eye[:, 5]) + _dist(eye[:, 2], eye[:, 4])) / (2 * _dist(eye[:, 0], eye[:, 3]) + 1e-6)


def attributes_from_landmarks(points: np.ndarray, images: np.ndarray):
    """DataFrame (N rows, the columns of ``ATTRIBUTES``) from landmarks (N, 68, 2) and uint8 faces (N, H, W)."""
    import pandas as pd

    points = np.asarray(points, dtype=np.float64)
    jaw = points[:, JAW]
    face_width = _dist(jaw[:, 0], jaw[:, -1]) + 1e-6
    lip = points[:, INNER_LIP]  # 60-67: 60 and 64 the corners, 61-63 upper, 67-65 lower
    mouth = np.mean([_dist(lip[:, 1], lip[:, 7]), _dist(lip[:, 2], lip[:, 6]), _dist(lip[:, 3], lip[:, 5])], axis=0)
    eyes = (eye_aspect_ratio(points[:, RIGHT_EYE]) + eye_aspect_ratio(points[:, LEFT_EYE])) / 2
    brows = np.mean([_dist(points[:, side_brow].mean(1), points[:, side_eye].mean(1))
                     for side_brow, side_eye in ((RIGHT_BROW, RIGHT_EYE), (LEFT_BROW, LEFT_EYE))], axis=0)
    nose_tip = points[:, 30]
    to_right, to_left = _dist(nose_tip, jaw[:, 0]), _dist(nose_tip, jaw[:, -1])  # jaw point 0: subject's right
    yaw = (to_right - to_left) / (to_right + to_left + 1e-6)
    pixels = np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255
    return pd.DataFrame({"mouth_open": mouth / face_width, "eye_open": eyes,
                         "brow_height": brows / face_width, "yaw": yaw, "head_turn": np.abs(yaw),
                         "brightness": pixels.mean(1), "contrast": pixels.std(1)})


def face_attributes(images: np.ndarray, cache_dir: Path | None = None):
    """:func:`attributes_from_landmarks` of dlib's landmarks for uint8 faces (N, 48, 48), plus a ``detected``
    column (the face detector found the face). Where it did not, the landmark columns (``FROM_LANDMARKS``) are
    missing (NaN): landmarks fitted to the whole frame measure the frame, not the face.

    About 10 ms a face; with ``cache_dir`` the result is stored there by the hash of the pixels.
    """
    import pandas as pd

    from fer_lib.data.landmarks import UPSAMPLE, face_landmarks

    images = np.ascontiguousarray(images, dtype=np.uint8)
    entry = None
    if cache_dir is not None:
        h = hashlib.sha256(images.tobytes())
        h.update(f"{UPSAMPLE}-{_FORMAT}".encode())
        entry = Path(cache_dir) / f"face-attributes-{h.hexdigest()[:16]}.csv"
        if entry.exists():
            return pd.read_csv(entry)
    points, detected = face_landmarks(images)
    table = attributes_from_landmarks(points, images)
    table.loc[~np.asarray(detected, bool), list(FROM_LANDMARKS)] = np.nan
    table["detected"] = detected
    if entry is not None:
        atomic_write(entry, lambda tmp: table.to_csv(tmp, index=False))
    return table
