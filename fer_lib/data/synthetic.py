"""The embedded default dataset: procedurally drawn 48x48 faces of the 7 expressions.

Each class is a prototype of facial cues (mouth curvature and opening, brow slant and height, eye
opening, nose wrinkle). Every face draws its cues around its class prototype, and a random identity
(face shape, skin and background tone), pose (rotation, scale, shift), lighting gradient and noise.
The prototypes of Fear/Surprise, Sad/Neutral and Angry/Disgust are deliberately close, so a
confusion matrix on this data has structure. Everything is deterministic given the seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_lib import CLASS_NAMES, IMAGE_SIZE


@dataclass(frozen=True)
class Cues:
    mouth_curve: float  # > 0 corners up (smile), < 0 corners down
    mouth_open: float  # 0 closed .. 1 wide open
    brow_slant: float  # > 0 inner ends down (frown), < 0 inner ends up (worry)
    brow_raise: float  # > 0 brows higher
    eye_open: float  # 1 neutral, < 1 narrowed, > 1 wide
    nose_wrinkle: float  # 0 none .. 1 strong


PROTOTYPES = {
    "Angry": Cues(mouth_curve=-0.35, mouth_open=0.05, brow_slant=0.8, brow_raise=-0.5, eye_open=0.75,
                  nose_wrinkle=0.25),
    "Disgust": Cues(mouth_curve=-0.55, mouth_open=0.25, brow_slant=0.55, brow_raise=-0.35, eye_open=0.6,
                    nose_wrinkle=1.0),
    "Fear": Cues(mouth_curve=-0.2, mouth_open=0.55, brow_slant=-0.55, brow_raise=0.6, eye_open=1.35, nose_wrinkle=0.0),
    "Happy": Cues(mouth_curve=0.9, mouth_open=0.3, brow_slant=0.0, brow_raise=0.05, eye_open=0.8, nose_wrinkle=0.0),
    "Sad": Cues(mouth_curve=-0.55, mouth_open=0.0, brow_slant=-0.6, brow_raise=0.1, eye_open=0.8, nose_wrinkle=0.0),
    "Surprise": Cues(mouth_curve=0.0, mouth_open=0.95, brow_slant=0.0, brow_raise=0.9, eye_open=1.5, nose_wrinkle=0.0),
    "Neutral": Cues(mouth_curve=-0.1, mouth_open=0.0, brow_slant=0.0, brow_raise=0.0, eye_open=1.0, nose_wrinkle=0.0),
}
CUE_SPREAD = Cues(mouth_curve=0.22, mouth_open=0.15, brow_slant=0.25, brow_raise=0.25, eye_open=0.15, nose_wrinkle=0.2)
# class mix roughly like FER2013's (Happy most common, Disgust rare but present)
CLASS_SHARES = np.array([0.14, 0.06, 0.14, 0.22, 0.15, 0.12, 0.17])
FEATURE_REGIONS = ("eyes_brows", "nose", "mouth")


def _soft(d: np.ndarray, width: float = 0.6) -> np.ndarray:
    """Anti-aliased inside-ness from a signed distance in pixels (negative inside)."""
    return 1 / (1 + np.exp(np.clip(d / width, -30, 30)))


def _segment_distance(px, py, x0, y0, x1, y1):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    return np.hypot(px - (x0 + t * dx), py - (y0 + t * dy))


def draw_face(cues: Cues, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One face: float image (48, 48) in [0, 1] and boolean masks of the drawn feature regions."""
    n = IMAGE_SIZE
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    # pose: face frame -> pixels; u, v are face coordinates in units of the face half-width
    angle = rng.normal(0, 0.12)
    half_w = rng.uniform(14.5, 18.0)
    aspect = rng.uniform(1.15, 1.35)  # face height / width
    cx, cy = n / 2 + rng.uniform(-2.5, 2.5), n / 2 + rng.uniform(-2.0, 3.0)
    ca, sa = np.cos(angle), np.sin(angle)
    u = ((x - cx) * ca + (y - cy) * sa) / half_w
    v = (-(x - cx) * sa + (y - cy) * ca) / half_w
    px = half_w  # pixels per face unit, for anti-aliasing widths

    background = rng.uniform(0.05, 0.95)
    skin = np.clip(background + rng.choice([-1, 1]) * rng.uniform(0.2, 0.45), 0.3, 0.9)
    face = _soft((np.hypot(u, v / aspect) - 1) * px, 0.8)
    img = background * (1 - face) + skin * face
    dark = skin * rng.uniform(0.1, 0.3)  # features are darker than skin
    masks = {}

    # eyes: ellipses whose height follows eye_open
    eye_y, eye_dx = -0.12 * aspect, rng.uniform(0.36, 0.44)
    eye_h = 0.09 * cues.eye_open
    eye = np.zeros_like(u)
    for side in (-1, 1):
        d = np.hypot((u - side * eye_dx) / 0.18, (v - eye_y) / max(eye_h, 0.02)) - 1
        eye = np.maximum(eye, _soft(d * 0.18 * px))
    # brows: thick segments; slant moves the inner ends, raise moves both
    brow_y = eye_y - 0.22 - 0.12 * cues.brow_raise
    brow = np.zeros_like(u)
    for side in (-1, 1):
        inner_x, outer_x = side * 0.14, side * 0.62
        inner_y, outer_y = brow_y + 0.11 * cues.brow_slant, brow_y - 0.04 * cues.brow_slant
        d = _segment_distance(u, v, inner_x, inner_y, outer_x, outer_y)
        brow = np.maximum(brow, _soft((d - 0.055) * px))
    masks["eyes_brows"] = np.hypot(u / 0.8, (v - (eye_y + brow_y) / 2) / 0.32) < 1
    # nose: a short ridge, nostrils, and horizontal wrinkles on the bridge
    nose = 0.5 * _soft((_segment_distance(u, v, 0.0, eye_y + 0.1, 0.03, 0.22 * aspect) - 0.025) * px)
    for side in (-1, 1):
        nose = np.maximum(nose, _soft((np.hypot(u - side * 0.1, v - 0.25 * aspect) - 0.045) * px))
    for k in range(3):
        wy = eye_y + 0.05 + 0.07 * k
        d = _segment_distance(u, v, -0.13, wy, 0.13, wy)
        nose = np.maximum(nose, np.clip(cues.nose_wrinkle, 0, 1) * 0.8 * _soft((d - 0.02) * px))
    masks["nose"] = (np.abs(u) < 0.28) & (v > eye_y + 0.02) & (v < 0.32 * aspect)
    # mouth: lips along a parabola (curvature), opened into a dark gap (opening)
    mouth_y, mouth_w = 0.5 * aspect, rng.uniform(0.36, 0.46) * (1 - 0.25 * max(cues.mouth_open - 0.6, 0))
    t = np.clip(u / mouth_w, -1, 1)
    centre_line = mouth_y - 0.16 * cues.mouth_curve * (t ** 2 - 0.5)
    gap = 0.34 * max(cues.mouth_open, 0) * np.sqrt(np.clip(1 - t ** 2, 0, 1))
    inside_x = np.abs(u) <= mouth_w
    upper, lower = centre_line - gap / 2, centre_line + gap / 2
    lips = _soft((np.minimum(np.abs(v - upper), np.abs(v - lower)) - 0.03) * px) * inside_x
    opening = _soft((np.maximum(upper - v, v - lower)) * px) * inside_x * (gap > 0.01)
    mouth = np.maximum(lips, opening)
    masks["mouth"] = (np.abs(u) < mouth_w + 0.15) & (np.abs(v - mouth_y) < 0.36)

    features = np.maximum.reduce([eye, brow, nose, mouth])
    img = img * (1 - features) + dark * features
    # lighting gradient and sensor noise
    gx, gy = rng.normal(0, 0.006, size=2)
    img = img + gx * (x - n / 2) + gy * (y - n / 2)
    img = img + rng.normal(0, rng.uniform(0.01, 0.04), size=img.shape)
    return np.clip(img, 0, 1), masks


def sample_cues(label: int, rng: np.random.Generator) -> Cues:
    proto, spread = PROTOTYPES[CLASS_NAMES[label]], CUE_SPREAD
    values = {f: getattr(proto, f) + rng.normal(0, getattr(spread, f)) for f in proto.__dataclass_fields__}
    values["eye_open"] = max(values["eye_open"], 0.25)
    return Cues(**values)


def make_faces(n: int, seed: int = 0, with_masks: bool = False):
    """``n`` faces: uint8 images (n, 48, 48), labels (n,), and, if asked, feature masks (n, 48, 48) per region."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(CLASS_NAMES), size=n, p=CLASS_SHARES / CLASS_SHARES.sum())
    images = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    masks = {r: np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), bool) for r in FEATURE_REGIONS}
    for i, label in enumerate(labels):
        img, m = draw_face(sample_cues(int(label), rng), rng)
        images[i] = np.round(img * 255).astype(np.uint8)
        for r in FEATURE_REGIONS:
            masks[r][i] = m[r]
    labels = labels.astype(np.int64)
    return (images, labels, masks) if with_masks else (images, labels)


def write_synthetic_dataset(out: Path, n_train: int = 3500, n_test: int = 700, seed: int = 0) -> list[Path]:
    """Write ``out``/train.csv (label,feature), test.csv (id,feature), test_labels.csv (id,label) and the
    SYNTHETIC.txt marker, by which the loader and every report page know this is not FER2013."""
    import pandas as pd

    from fer_lib.core.io import atomic_write
    from fer_lib.data.layouts import SYNTHETIC_MARKER

    if n_train < 1 or n_test < 0:
        raise ValueError("need n_train >= 1 and n_test >= 0")  # a caller's bug, not user input
    train_images, train_labels = make_faces(n_train, seed)
    test_images, test_labels = make_faces(n_test, seed + 1_000_003)  # disjoint stream from the training faces

    def pixels(images):
        return [" ".join(map(str, face.ravel().tolist())) for face in images]

    tables = {"train.csv": {"label": train_labels, "feature": pixels(train_images)},
              "test.csv": {"id": np.arange(n_test), "feature": pixels(test_images)},
              "test_labels.csv": {"id": np.arange(n_test), "label": test_labels}}
    paths = [Path(out) / name for name in (*tables, SYNTHETIC_MARKER)]
    for path, columns in zip(paths, tables.values()):
        atomic_write(path, lambda tmp, columns=columns: pd.DataFrame(columns).to_csv(tmp, index=False))
    atomic_write(paths[-1], lambda tmp: tmp.write_text(
        f"Synthetic faces drawn by fer_lib.data.synthetic (n_train={n_train}, n_test={n_test}, seed={seed}), "
        "not FER2013. This file marks the folder as the demo dataset.\n"))
    return paths


def ensure_synthetic_dataset(folder: Path, **sizes) -> Path:
    """``folder`` holding the embedded dataset, drawn on first use (deterministic, so redrawing is harmless)."""
    from fer_lib.data.layouts import SYNTHETIC_MARKER

    folder = Path(folder)
    if not all((folder / n).is_file() for n in ("train.csv", "test.csv", SYNTHETIC_MARKER)):
        write_synthetic_dataset(folder, **sizes)
    return folder
