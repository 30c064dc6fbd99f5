"""Per-face attributes from 68-point landmarks and pixels (Q5); face width is jaw point 0 to jaw point 16.

  mouth opening  inner-lip height (mean gap of the three inner-lip point pairs) / face width: 0 closed, 0.3 wide open
  eye opening    eye aspect ratio (two lid gaps over twice the corner-to-corner width), both eyes: 0.3 open, < 0.15 shut
  brow height    brow centre to eye centre / face width, both sides: higher raised (surprise), lower lowered (anger)
  head turn      |nose tip to one jaw end - to the other| / their sum, in [0, 1]: 0 frontal
  brightness, contrast   mean and standard deviation of the gray levels / 255
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fer_lib.data.landmarks import INNER_LIP, JAW, LEFT_BROW, LEFT_EYE, RIGHT_BROW, RIGHT_EYE

ATTRIBUTES = {"mouth_open": "mouth opening", "eye_open": "eye opening", "brow_height": "brow height",
              "head_turn": "head turn", "brightness": "brightness", "contrast": "contrast"}
FROM_LANDMARKS = ("mouth_open", "eye_open", "brow_height", "head_turn")  # missing where no face was found


def attributes_from_landmarks(points: np.ndarray, images: np.ndarray) -> pd.DataFrame:
    """DataFrame (N rows, the columns of ``ATTRIBUTES``) from landmarks (N, 68, 2) and uint8 faces (N, H, W)."""
    points = np.asarray(points, dtype=np.float64)

    def gap(a, b):  # (N,) distances between points a and b
        return np.linalg.norm(points[:, a] - points[:, b], axis=-1)

    def eye_aspect_ratio(s):  # iBUG order from s: corner, two upper lid points, corner, two lower lid points
        return (gap(s + 1, s + 5) + gap(s + 2, s + 4)) / (2 * gap(s, s + 3) + 1e-6)

    face_width = gap(JAW.start, JAW.stop - 1) + 1e-6
    lip = INNER_LIP.start  # 60-67: 60 and 64 the corners, 61-63 upper, 67-65 lower
    mouth = np.mean([gap(lip + 1, lip + 7), gap(lip + 2, lip + 6), gap(lip + 3, lip + 5)], axis=0)
    eyes = (eye_aspect_ratio(RIGHT_EYE.start) + eye_aspect_ratio(LEFT_EYE.start)) / 2
    brows = np.mean([np.linalg.norm(points[:, b].mean(1) - points[:, e].mean(1), axis=-1)
                     for b, e in ((RIGHT_BROW, RIGHT_EYE), (LEFT_BROW, LEFT_EYE))], axis=0)
    to_right, to_left = gap(30, JAW.start), gap(30, JAW.stop - 1)  # nose tip (30) to the jaw's ends
    pixels = np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255
    return pd.DataFrame({"mouth_open": mouth / face_width, "eye_open": eyes, "brow_height": brows / face_width,
                         "head_turn": np.abs(to_right - to_left) / (to_right + to_left + 1e-6),
                         "brightness": pixels.mean(1), "contrast": pixels.std(1)})


def face_attributes(images: np.ndarray, cache_dir: Path | None = None) -> pd.DataFrame:
    """:func:`attributes_from_landmarks` of dlib's landmarks for uint8 faces (N, 48, 48), plus ``detected`` (the face
    detector found the face; where it did not, the ``FROM_LANDMARKS`` columns are NaN: landmarks fitted to the whole
    frame measure the frame, not the face). The landmarks are cached in ``cache_dir`` (:func:`face_landmarks`)."""
    from fer_lib.data.landmarks import face_landmarks

    points, detected = face_landmarks(images, cache_dir=cache_dir)
    table = attributes_from_landmarks(points, images)
    table.loc[~np.asarray(detected, bool), list(FROM_LANDMARKS)] = np.nan
    table["detected"] = detected
    return table
