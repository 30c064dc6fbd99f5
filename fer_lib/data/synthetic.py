"""The embedded default dataset: 48x48 faces of the 7 expressions, drawn around each class's prototype cues with a
random identity, pose, lighting and noise, deterministically from a seed. The prototypes of Fear/Surprise, Sad/Neutral
and Angry/Disgust are deliberately close, so that a confusion matrix on this data has structure."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_lib import CLASS_NAMES, IMAGE_SIZE
from fer_lib.core.io import atomic_write

SYNTHETIC_MARKER = "SYNTHETIC.txt"  # a folder holding this file is the embedded demo dataset, whatever its name

# cues, one row per class in CLASS_NAMES order: mouth curve (> 0 corners up), mouth opening (0..1), brow slant
# (> 0 inner ends down: a frown), brow raise, eye opening (1 neutral), nose wrinkle (0..1)
PROTOTYPES = np.array([[-0.35, 0.05, 0.8, -0.5, 0.75, 0.25],  # Angry
                       [-0.55, 0.25, 0.55, -0.35, 0.6, 1.0],  # Disgust
                       [-0.2, 0.55, -0.55, 0.6, 1.35, 0.0],  # Fear
                       [0.9, 0.3, 0.0, 0.05, 0.8, 0.0],  # Happy
                       [-0.55, 0.0, -0.6, 0.1, 0.8, 0.0],  # Sad
                       [0.0, 0.95, 0.0, 0.9, 1.5, 0.0],  # Surprise
                       [-0.1, 0.0, 0.0, 0.0, 1.0, 0.0]])  # Neutral
CUE_SPREAD = np.array([0.22, 0.15, 0.25, 0.25, 0.15, 0.2])
CLASS_SHARES = np.array([0.14, 0.06, 0.14, 0.22, 0.15, 0.12, 0.17])  # roughly FER2013's: Happy most, Disgust rare


def _soft(d: np.ndarray, width: float = 0.6) -> np.ndarray:
    """Anti-aliased inside-ness from a signed distance in pixels (negative inside)."""
    return 1 / (1 + np.exp(np.clip(d / width, -30, 30)))


def _segment_distance(px, py, x0, y0, x1, y1):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    return np.hypot(px - (x0 + t * dx), py - (y0 + t * dy))


def draw_face(cues: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One face: float image (48, 48) in [0, 1] and boolean masks of the drawn feature regions."""
    mouth_curve, mouth_open, brow_slant, brow_raise, eye_open, nose_wrinkle = cues
    n = IMAGE_SIZE
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    # pose: u, v are face coordinates in units of the face half-width (px pixels)
    angle, px, aspect = rng.normal(0, 0.12), rng.uniform(14.5, 18.0), rng.uniform(1.15, 1.35)
    cx, cy = n / 2 + rng.uniform(-2.5, 2.5), n / 2 + rng.uniform(-2.0, 3.0)
    u = ((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)) / px
    v = (-(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)) / px
    background = rng.uniform(0.05, 0.95)
    skin = np.clip(background + rng.choice([-1, 1]) * rng.uniform(0.2, 0.45), 0.3, 0.9)
    face = _soft((np.hypot(u, v / aspect) - 1) * px, 0.8)
    img = background * (1 - face) + skin * face
    dark = skin * rng.uniform(0.1, 0.3)  # features are darker than skin
    # eyes: ellipses whose height follows the eye opening; brows: thick segments, slant moves the inner ends
    eye_y, eye_dx = -0.12 * aspect, rng.uniform(0.36, 0.44)
    brow_y = eye_y - 0.22 - 0.12 * brow_raise
    eye = np.maximum(*(_soft((np.hypot((u - side * eye_dx) / 0.18, (v - eye_y) / (0.09 * max(eye_open, 0.25))) - 1)
                             * 0.18 * px) for side in (-1, 1)))
    brow = np.maximum(*(_soft((_segment_distance(u, v, side * 0.14, brow_y + 0.11 * brow_slant, side * 0.62,
                                                 brow_y - 0.04 * brow_slant) - 0.055) * px) for side in (-1, 1)))
    # nose: a short ridge, nostrils, and horizontal wrinkles on the bridge
    nose = 0.5 * _soft((_segment_distance(u, v, 0.0, eye_y + 0.1, 0.03, 0.22 * aspect) - 0.025) * px)
    nose = np.maximum(nose, np.maximum(*(_soft((np.hypot(u - side * 0.1, v - 0.25 * aspect) - 0.045) * px)
                                         for side in (-1, 1))))
    for wy in eye_y + 0.05 + 0.07 * np.arange(3):
        d = _segment_distance(u, v, -0.13, wy, 0.13, wy)
        nose = np.maximum(nose, np.clip(nose_wrinkle, 0, 1) * 0.8 * _soft((d - 0.02) * px))
    # mouth: lips along a parabola (curvature), opened into a dark gap (opening)
    mouth_y, mouth_w = 0.5 * aspect, rng.uniform(0.36, 0.46) * (1 - 0.25 * max(mouth_open - 0.6, 0))
    t = np.clip(u / mouth_w, -1, 1)
    centre_line = mouth_y - 0.16 * mouth_curve * (t ** 2 - 0.5)
    gap = 0.34 * max(mouth_open, 0) * np.sqrt(np.clip(1 - t ** 2, 0, 1))
    inside_x = np.abs(u) <= mouth_w
    upper, lower = centre_line - gap / 2, centre_line + gap / 2
    lips = _soft((np.minimum(np.abs(v - upper), np.abs(v - lower)) - 0.03) * px) * inside_x
    opening = _soft((np.maximum(upper - v, v - lower)) * px) * inside_x * (gap > 0.01)
    features = np.maximum.reduce([eye, brow, nose, np.maximum(lips, opening)])
    img = img * (1 - features) + dark * features
    gx, gy = rng.normal(0, 0.006, size=2)  # lighting gradient, then sensor noise
    img = img + gx * (x - n / 2) + gy * (y - n / 2)
    img = img + rng.normal(0, rng.uniform(0.01, 0.04), size=img.shape)
    masks = {"eyes_brows": np.hypot(u / 0.8, (v - (eye_y + brow_y) / 2) / 0.32) < 1,
             "nose": (np.abs(u) < 0.28) & (v > eye_y + 0.02) & (v < 0.32 * aspect),
             "mouth": (np.abs(u) < mouth_w + 0.15) & (np.abs(v - mouth_y) < 0.36)}
    return np.clip(img, 0, 1), masks


def make_faces(n: int, seed: int = 0, with_masks: bool = False):
    """``n`` faces: uint8 images (n, 48, 48), labels (n,), and, if asked, feature masks (n, 48, 48) per region."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(CLASS_NAMES), size=n, p=CLASS_SHARES / CLASS_SHARES.sum()).astype(np.int64)
    faces = [draw_face(PROTOTYPES[label] + rng.normal(0, CUE_SPREAD), rng) for label in labels]
    images = np.array([np.round(img * 255) for img, _ in faces], dtype=np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE)
    masks = {r: np.array([m[r] for _, m in faces], bool).reshape(images.shape) for r in ("eyes_brows", "nose", "mouth")}
    return (images, labels, masks) if with_masks else (images, labels)


def write_synthetic_dataset(out: Path, n_train: int = 3500, n_test: int = 700, seed: int = 0) -> list[Path]:
    """Write ``out``/train.csv (label,feature), test.csv (id,feature), test_labels.csv (id,label) and the
    SYNTHETIC.txt marker, by which the loader and every report page know this is not FER2013."""
    import pandas as pd

    (train_images, train_labels), (test_images, test_labels) = make_faces(n_train, seed), make_faces(
        n_test, seed + 1_000_003)  # a stream disjoint from the training faces'
    pixels = [" ".join(map(str, face.ravel().tolist())) for face in (*train_images, *test_images)]
    tables = {"train.csv": {"label": train_labels, "feature": pixels[:n_train]},
              "test.csv": {"id": np.arange(n_test), "feature": pixels[n_train:]},
              "test_labels.csv": {"id": np.arange(n_test), "label": test_labels}}
    for name, columns in tables.items():
        atomic_write(Path(out) / name, lambda tmp, columns=columns: pd.DataFrame(columns).to_csv(tmp, index=False))
    atomic_write(Path(out) / SYNTHETIC_MARKER, lambda tmp: tmp.write_text(
        f"Synthetic faces drawn by fer_lib.data.synthetic (n_train={n_train}, n_test={n_test}, seed={seed}), "
        "not FER2013. This file marks the folder as the demo dataset.\n"))
    return [Path(out) / name for name in (*tables, SYNTHETIC_MARKER)]


def ensure_synthetic_dataset(folder: Path, **sizes) -> Path:
    """``folder`` holding the embedded dataset, drawn on first use (deterministic, so redrawing is harmless)."""
    if not all((Path(folder) / n).is_file() for n in ("train.csv", "test.csv", SYNTHETIC_MARKER)):
        write_synthetic_dataset(folder, **sizes)
    return Path(folder)
