"""Faces in a photo: found by dlib's HOG detector, checked by their 68 landmarks, cropped in FER2013's framing
(48x48 gray) and classified with a run's test-time views and calibration (``Reader``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_lib import CLASS_NAMES, IMAGE_SIZE
from fer_lib.data.landmarks import LEFT_EYE, MOUTH, RIGHT_EYE, landmarks_in_box
from fer_lib.data.landmarks import detect_faces as hog_faces
from fer_lib.model.calibration import read_calibration
from fer_lib.model.inference import predict_logits
from fer_lib.training.runs import load_trained, prediction_tta

# HOG (one upsampling pass: faces from about 40 px) found 69-81% of FER2013 test faces composed at 40-200 px
MAX_DETECT_SIDE = 1600  # longer photos are downscaled for detection only; boxes map back, crops use the original
DETECT_RECALL = 0.75  # share of FER2013 faces at 96-200 px found and kept by the landmark check
# FER2013's frame around a HOG box (brows to chin), measured on 226 found test faces: its side is 1.09-1.28 times
# the box's (median 1.14-1.2) and its centre 0.06-0.13 of the side above the box's centre.
CROP_SCALE, CROP_SHIFT_UP = 1.18, 0.10
# A plausible face, measured on 521 face boxes and 1,521 boxes on 22 face-free pictures: drops 0.8% of the faces,
# keeps 3.1% of the face-free boxes (stripes, checks, plaid).
EYE_DISTANCE = (0.25, 0.60)  # between the eye centres / box width; faces 0.27-0.53
EYES_TO_MOUTH = (0.28, 0.65)  # from the eyes' midpoint down to the mouth's centre / box height; faces 0.32-0.57
# On a face the predictor finds the same features when the box moves (it follows 0.10 of a move, median); on a wall
# or a shirt its points are placed relative to the box and move with it (1.00).
MAX_FOLLOW, PROBE_MOVE = 0.7, 0.125  # the box is moved by PROBE_MOVE of its side, four ways


class PhotoError(ValueError):
    """A photo that cannot be used; the message names the file and the problem."""


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in the upright photo's pixels
    probs: np.ndarray  # (7,) softmax of the test-time-view logits / the run's temperature
    label: str  # the most probable class
    prob: float  # its probability
    uncertain: bool | None  # prob below the run's threshold; None when the run has no calibration
    crop: np.ndarray  # (48, 48) uint8: what the model saw
    landmarks: np.ndarray  # (68, 2) x, y in the photo's pixels (iBUG 68 scheme)
    track: int | None = None  # in a clip: the same person from frame to frame


@dataclass
class PhotoResult:
    path: Path
    faces: list[Face] = field(default_factory=list)
    error: str | None = None  # why the file could not be used
    rejected: int = 0  # detector boxes dropped by the landmark check
    frame: int | None = None  # in a clip: the frame's number (0-based, at the video's own frame rate)
    time: float | None = None  # in a video: the frame's time in seconds


def open_photo(path: str | Path):
    """The photo upright (EXIF orientation) in mode "L" or "RGB": 16-bit gray scaled to 8 bits, transparency on
    white; PhotoError naming the file when it cannot be read."""
    if not Path(path).is_file():
        raise PhotoError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # decodes: a truncated or corrupt file fails here
    except UnidentifiedImageError:
        raise PhotoError(f"{path}: not an image file PIL can read (expected PNG, JPEG, BMP, WebP or TIFF)") from None
    except Exception as err:  # noqa: BLE001 - decoders raise many kinds (OSError, SyntaxError, struct.error, ...)
        raise PhotoError(f"{path}: corrupt, truncated or unreadable image ({err.__class__.__name__}: {err})") from None
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, np.float64)
        return Image.fromarray((a / 257 if a.max(initial=0) > 255 else a).round().astype(np.uint8), "L")
    if "A" in img.mode or "transparency" in img.info:
        return Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA")).convert("RGB")
    return img if img.mode in ("L", "RGB") else img.convert("RGB")


def to_gray(image) -> np.ndarray:
    """(H, W) uint8 gray of a PIL image or an (H, W) / (H, W, 3) uint8 array: ITU-R 601 luma, PIL's "L" formula."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            return image
        image = Image.fromarray(image[..., :3])
    return np.asarray(image.convert("L"))


def detect_faces(gray: np.ndarray, max_side: int = MAX_DETECT_SIDE) -> np.ndarray:
    """dlib's HOG boxes (K, 4) x, y, w, h, unchecked, in reading order (rows from the top, each left to right); a
    photo with a side over ``max_side`` is detected area-downscaled, so 24 megapixels take as long as 2."""
    h, w = gray.shape
    scale = min(1.0, max_side / max(h, w))
    small = gray if scale == 1 else cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    boxes = np.array([(x0, y0, x1 - x0 + 1, y1 - y0 + 1) for (x0, y0, x1, y1), _ in hog_faces(small, 1)],
                     np.float64).reshape(-1, 4)  # dlib's right and bottom are inclusive
    boxes = np.round(boxes / scale).astype(np.int64)
    cy = boxes[:, 1] + boxes[:, 3] / 2
    rows, row, start = np.zeros(len(boxes), np.int64), 0, -np.inf
    for i in np.argsort(cy, kind="stable"):  # a row: centres within half a median face height of its first one
        if cy[i] - start > np.median(boxes[:, 3]) / 2:
            row, start = row + 1, cy[i]
        rows[i] = row
    return boxes[np.lexsort((boxes[:, 0], rows))]


def check_face(gray: np.ndarray, box) -> tuple[np.ndarray, str | None]:
    """The box's 68 landmarks (68, 2) in ``gray``'s pixels, and why the box is not a face (None when it is one)."""
    x, y, w, h = box

    def points(dx: int = 0, dy: int = 0) -> np.ndarray:
        return landmarks_in_box(gray, (x + dx, y + dy, x + dx + w - 1, y + dy + h - 1))

    pts = points()
    right_eye, left_eye = pts[RIGHT_EYE].mean(0), pts[LEFT_EYE].mean(0)  # the subject's right eye is on the left
    nose, mouth, eyes = pts[30], pts[MOUTH].mean(0), (right_eye + left_eye) / 2
    key = np.stack([right_eye, left_eye, nose, mouth])
    if not (((key[:, 0] >= x) & (key[:, 0] < x + w) & (key[:, 1] >= y) & (key[:, 1] < y + h)).all()
            and eyes[1] < nose[1] < mouth[1] and right_eye[0] < left_eye[0]):
        return pts, "eyes, nose and mouth not inside the box in a face's order"
    apart, below = np.linalg.norm(left_eye - right_eye) / w, (mouth[1] - eyes[1]) / h
    if not (EYE_DISTANCE[0] <= apart <= EYE_DISTANCE[1] and EYES_TO_MOUTH[0] <= below <= EYES_TO_MOUTH[1]):
        return pts, f"eyes {apart:.2f} of the box apart, mouth {below:.2f} below them: not a face's proportions"
    step = max(1, round(PROBE_MOVE * w))
    follow = np.mean([np.mean((points(dx, dy) - pts) @ np.array([dx, dy], np.float64)) / step ** 2
                      for dx, dy in ((step, 0), (-step, 0), (0, step), (0, -step))])
    if follow > MAX_FOLLOW:
        return pts, f"landmarks follow the box, not the image ({follow:.0%} of a move; a face: < {MAX_FOLLOW:.0%})"
    return pts, None


def crop_box(box) -> tuple[int, int, int]:
    """The square FER2013-like frame (x0, y0, side): the box grown CROP_SCALE times and moved up CROP_SHIFT_UP."""
    x, y, w, h = box
    side = round(max(w, h) * CROP_SCALE)
    return round(x + w / 2 - side / 2), round(y + h / 2 - CROP_SHIFT_UP * max(w, h) - side / 2), side


def crop_face(gray: np.ndarray, box) -> np.ndarray:
    """(48, 48) uint8: the frame around ``box``, edge pixels repeated where it leaves the photo, area-resampled
    down (cubic up, for faces smaller than 48 px)."""
    x0, y0, side = crop_box(box)
    pad = max(0, -x0, -y0, x0 + side - gray.shape[1], y0 + side - gray.shape[0])
    region = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)[y0 + pad:y0 + pad + side,
                                                                               x0 + pad:x0 + pad + side]
    return cv2.resize(region, (IMAGE_SIZE, IMAGE_SIZE),
                      interpolation=cv2.INTER_AREA if side >= IMAGE_SIZE else cv2.INTER_CUBIC)


@dataclass
class Reader:
    """A run's model as its predictions read a face: its input size, test-time views and calibration."""
    model: torch.nn.Module
    input_size: int = IMAGE_SIZE
    tta: str = "flip"
    temperature: float = 1.0
    uncertain_below: float | None = None  # None: the run has no calibration.json, nothing is marked uncertain

    @classmethod
    def from_run(cls, run_dir: str | Path, device="cpu") -> Reader:
        model, config = load_trained(Path(run_dir), device)
        calibration = read_calibration(Path(run_dir)) or {}
        return cls(model, config.input_size, prediction_tta(Path(run_dir)), float(calibration.get("temperature", 1)),
                   calibration.get("uncertain_below"))

    def probs(self, crops: np.ndarray) -> np.ndarray:
        """(N, 7) probabilities of uint8 faces (N, 48, 48): softmax of the test-time-view logits / temperature."""
        logits = predict_logits(self.model, np.ascontiguousarray(crops), self.input_size, tta=self.tta)
        return torch.softmax(logits / self.temperature, dim=1).numpy()

    def __call__(self, image) -> tuple[list[Face], list[str]]:
        """The faces in ``image`` (PIL image or array) that pass the landmark check, cropped and classified, and
        why each other detector box was dropped."""
        gray = to_gray(image)
        checked = [(tuple(int(v) for v in box), *check_face(gray, box)) for box in detect_faces(gray)]
        kept = [(box, pts) for box, pts, why in checked if why is None]
        crops = np.array([crop_face(gray, box) for box, _ in kept], np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        faces = [Face(box, p, CLASS_NAMES[p.argmax()], float(p.max()),
                      None if self.uncertain_below is None else bool(p.max() < self.uncertain_below), crop, pts)
                 for (box, pts), p, crop in zip(kept, self.probs(crops), crops)]
        return faces, [why for _, _, why in checked if why is not None]


def compose_faces(faces: np.ndarray, sides=None, per_row: int | None = None, seed: int = 0):
    """(canvas (H, W) uint8, boxes (N, 4) x, y, w, h): the 48x48 ``faces`` upscaled to ``sides`` (default: drawn
    from 96-200 px with ``seed``) on a gray canvas, in rows a third of the largest side apart."""
    n = len(faces)
    sides = np.random.default_rng(seed).integers(96, 201, n) if sides is None else np.asarray(sides, np.int64)
    per_row = per_row or int(np.ceil(np.sqrt(n)))
    gap = int(sides.max()) // 3 + 8
    rows = [range(i, min(i + per_row, n)) for i in range(0, n, per_row)]
    canvas = np.full((sum(int(sides[r].max()) + gap for r in rows) + gap,
                      max(sum(sides[r]) + gap * (len(r) + 1) for r in rows)), 128, np.uint8)
    boxes, y = np.zeros((n, 4), np.int64), gap
    for r in rows:
        x, row_h = gap, int(sides[r].max())
        for i in r:
            s, top = int(sides[i]), y + (row_h - int(sides[i])) // 2
            canvas[top:top + s, x:x + s] = cv2.resize(faces[i], (s, s), interpolation=cv2.INTER_CUBIC)
            boxes[i], x = (x, top, s, s), x + s + gap
        y += row_h + gap
    return canvas, boxes


def match_faces(found, placed: np.ndarray) -> np.ndarray:
    """For each placed box, the index of the first found face (a Face or a box) whose centre lies inside it, else -1."""
    found = np.asarray([f.box if isinstance(f, Face) else f for f in found], np.float64).reshape(-1, 4)
    cx, cy = (found[:, :2] + found[:, 2:] / 2).T
    inside = [np.flatnonzero((cx >= x) & (cx < x + w) & (cy >= y) & (cy < y + h)) for x, y, w, h in placed]
    return np.array([i[0] if len(i) else -1 for i in inside], np.int64)
