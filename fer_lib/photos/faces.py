"""Faces in a photo: find them (dlib's HOG detector), check each by its landmarks, crop as FER2013, classify.

The model only ever saw FER2013 faces: 48x48 gray, the face filling the frame. A photo is brought to that
form in steps, each a function here:
  open_photo     any size, colour or gray, PNG/JPEG/..., EXIF orientation applied -> upright PIL image
  to_gray        ITU-R 601 luma, as PIL's "L" mode computes it
  detect_faces   dlib's HOG frontal-face detector with one upsampling pass (built into dlib, nothing is
                 downloaded); photos larger than MAX_DETECT_SIDE are downscaled for detection only
  check_face     the box's 68 landmarks (dlib's shape predictor) must form a plausible face; others are dropped
  crop_face      the detected box grown and moved to FER2013's framing (CROP_SCALE, CROP_SHIFT_UP, measured),
                 area-resampled to 48x48
then ``classify_photo`` predicts with the run's test-time views and, when the run has a calibration, its
temperature. ``compose_faces`` lays dataset faces out on a canvas (the report page's default picture, and the tests').
Clips are in clips.py; the `classify` command and its outputs in classify.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_lib import CLASS_NAMES, IMAGE_SIZE

# Detection. dlib's HOG detector scans an 80x80 window over an image pyramid; one upsampling pass (the image
# doubled first) lets it find faces from about 40 px. Measured on composed pictures of 192 FER2013 test faces
# per size (plain gray canvas, 16 faces a picture; the Haar cascade this replaces found 74% at 96-200 px):
#   face side           40    48    64    80   100   150   200 px
#   upsample 0 recall   1%    3%   28%   70%   78%   78%   77%
#   upsample 1 recall  69%   75%   78%   79%   81%   79%   79%
# with no box off the faces at any size; 0.19 s per megapixel of the (downscaled) photo with upsampling, one core.
# On another 192 faces the detector found 72% at 48 px, 74% at 64, 78% at 100 and at 200, 76% at random sides of
# 96-200 px (the cascade's 74% setting), and after the landmark check 71%, 73%, 77%, 77% and 75%: the check drops
# 1 or 2 real faces in 192. A 1600x1200 photo takes 1-2 s (detection and check) on this busy 2-core machine.
DETECT_UPSAMPLE = 1
MAX_DETECT_SIDE = 1600  # photos with a longer side are downscaled for detection; boxes map back, crops use the original
MIN_FACE = 40  # smallest face side found (in pixels of the downscaled detection image): HOG's 80 px window / 2
DETECT_RECALL = 0.75  # share of FER2013 faces at 96-200 px found and kept by the landmark check (measured above)
# FER2013's framing for HOG boxes, measured (scripts in the issue-17 notes; FER2013 test faces upscaled to 96-200 px,
# the frame's border mirrored outwards so the surroundings continue past the face as in a photo; 226 of 300 found):
# - the frame's side is 1.14 times the box's (median; mean 1.16, quartiles 1.06 and 1.25: HOG's boxes come from a
#   pyramid with steps of 1.2, so a single box is quantised), and the frame's centre lies 0.07-0.13 of the box's
#   side above the box's centre (HOG's box runs from the brows to the chin; FER2013's frame includes the forehead).
# - registration check: the (scale, upward shift) at which the 48x48 crop differs least from the original face
#   (mean absolute pixel difference over a grid) is 1.2 and 0.10 for the mean difference, 1.16 and 0.10 per face
#   (median). On the plain canvas of the composed pictures (96 faces per size, 48-200 px) the frame is 1.09-1.28
#   times the box (median per size; no trend with size) and its centre 0.06-0.11 of the box above the box's.
#   1.18 and 0.10 sit between; the Haar cascade's boxes needed 1.03 and no shift.
CROP_SCALE = 1.18
CROP_SHIFT_UP = 0.10  # the frame's centre is this fraction of the box side above the box's centre


class PhotoError(ValueError):
    """A photo or video that cannot be used; the message names the file and the problem."""


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in the upright photo's pixels
    probs: np.ndarray  # (7,) class probabilities: softmax of the TTA logits / the run's temperature (1 uncalibrated)
    crop: np.ndarray  # (48, 48) uint8: what the model saw
    landmarks: np.ndarray | None = None  # (68, 2) float32 x, y in the photo's pixels (iBUG 68 scheme)
    uncertain: bool | None = None  # top probability below the run's threshold; None when the run has no calibration
    track: int | None = None  # in a clip: the face's track number (the same person from frame to frame)

    @property
    def label(self) -> str:
        return CLASS_NAMES[int(self.probs.argmax())]

    @property
    def prob(self) -> float:
        return float(self.probs.max())


@dataclass
class PhotoResult:
    path: Path
    faces: list[Face] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (width, height) upright; None when the file could not be read
    error: str | None = None  # why the file could not be used
    annotated: Path | None = None  # the annotated copy written for it
    rejected: int = 0  # detector boxes dropped by the landmark check
    frame: int | None = None  # in a clip: the frame's number (0-based, in the video's own frame rate)
    time: float | None = None  # in a video: the frame's time in seconds



# ---------------------------------------------------------------------------------------------
# reading a photo


def open_photo(path: str | Path):
    """The photo as an upright PIL image in mode "L" or "RGB" (EXIF orientation applied, transparency
    composited on white, 16-bit gray scaled to 8 bits); PhotoError naming the file when it cannot be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise PhotoError(f"{path}: no such file")
    if path.is_dir():
        raise PhotoError(f"{path}: is a folder, not an image")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated or corrupt file fails here, not later
            img = ImageOps.exif_transpose(img)
            return _to_l_or_rgb(img)
    except UnidentifiedImageError:
        raise PhotoError(f"{path}: not an image file PIL can read (expected PNG, JPEG, BMP, WebP or TIFF)") from None
    except Image.DecompressionBombError as err:
        raise PhotoError(f"{path}: too large to open safely ({err})") from None
    except PermissionError:
        raise PhotoError(f"{path}: permission denied") from None
    except Exception as err:  # noqa: BLE001 - decoders raise many kinds (OSError, SyntaxError, struct.error, ...)
        raise PhotoError(f"{path}: corrupt or truncated image ({err.__class__.__name__}: {err})") from None


def _to_l_or_rgb(img):
    from PIL import Image

    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit gray: bring the range to 0..255
        a = np.asarray(img, dtype=np.float64)
        if a.max(initial=0) > 255:
            a = a / 257 if a.max() <= 65535 else a * (255 / a.max())
        return Image.fromarray(a.round().clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("LA", "RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba).convert("RGB")
        return flat.convert("L") if img.mode in ("LA",) else flat
    return img.convert("RGB")  # P, CMYK, YCbCr, 1, ...


def to_gray(image) -> np.ndarray:
    """(H, W) uint8 gray of a PIL image or an array ((H, W) gray, (H, W, 3) RGB): ITU-R 601 luma
    (0.299 R + 0.587 G + 0.114 B), the formula of PIL's "L" mode."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(_to_l_or_rgb(image).convert("L"))
    a = np.asarray(image)
    if a.ndim == 2:
        return a.astype(np.uint8, copy=False)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return np.asarray(Image.fromarray(a[..., :3].astype(np.uint8, copy=False), "RGB").convert("L"))
    raise ValueError(f"expected an (H, W) gray or (H, W, 3) RGB image, got shape {a.shape}")


# ---------------------------------------------------------------------------------------------
# detection and cropping


def detect_faces(gray: np.ndarray, max_side: int = MAX_DETECT_SIDE, upsample: int = DETECT_UPSAMPLE) -> np.ndarray:
    """Boxes (K, 4) int64 as x, y, w, h in ``gray``'s pixels, in reading order (top row first, left to right):
    dlib's HOG detector, unchecked.

    An image whose long side exceeds ``max_side`` is detected at that size (area-downscaled) and its boxes
    scaled back, so a 24-megapixel photo takes as long as a 2-megapixel one.
    """
    import cv2

    from fer_lib.data.landmarks import detect_faces as hog_faces

    h, w = gray.shape
    scale = min(1.0, max_side / max(h, w))
    small = gray if scale == 1.0 else cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                 interpolation=cv2.INTER_AREA)
    if min(small.shape) < MIN_FACE:
        return np.zeros((0, 4), np.int64)
    found = hog_faces(small, upsample)
    # dlib's right and bottom are inclusive
    boxes = np.array([(left, top, right - left + 1, bottom - top + 1) for (left, top, right, bottom), _ in found],
                     np.float64).reshape(-1, 4) / scale
    boxes = np.round(boxes).astype(np.int64)
    return boxes[reading_order_index(boxes)]


def find_faces(gray: np.ndarray, max_side: int = MAX_DETECT_SIDE) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The detector's boxes that pass the landmark check: (boxes (K, 4) x, y, w, h in reading order, their
    landmarks (K, 68, 2), the reasons the other boxes were dropped)."""
    boxes, points, dropped = [], [], []
    for box in detect_faces(gray, max_side):
        pts, why = check_face(gray, tuple(int(v) for v in box))
        if why is None:
            boxes.append(box)
            points.append(pts)
        else:
            dropped.append(why)
    return (np.array(boxes, np.int64).reshape(-1, 4), np.array(points, np.float32).reshape(-1, 68, 2), dropped)


def reading_order_index(boxes: np.ndarray) -> np.ndarray:
    """The order of boxes in rows from the top (a box whose centre is within half a median face height below the
    row's first centre joins that row), each row left to right: face 1 is the top-left one."""
    if len(boxes) < 2:
        return np.arange(len(boxes))
    cy = boxes[:, 1] + boxes[:, 3] / 2
    half = np.median(boxes[:, 3]) / 2
    row, rows, start = 0, np.zeros(len(boxes), np.int64), None
    for i in np.argsort(cy, kind="stable"):
        if start is not None and cy[i] - start > half:
            row += 1
            start = None
        start = cy[i] if start is None else start
        rows[i] = row
    return np.lexsort((boxes[:, 0], rows))


# ---------------------------------------------------------------------------------------------
# the landmark check: does a box hold a face?

# Limits of a plausible face, measured on 521 HOG boxes of FER2013 test faces (composed pictures, faces of 48-200 px)
# and on 1,521 boxes on 22 face-free pictures (blank, noise, stripes, checks, plaid, knit, a shirt with a bow tie,
# beads, clutter; a grid of boxes of 60-200 px and the detector's near misses). On every face box the eyes, nose and
# mouth lie inside the box in a face's order; so do they on most face-free boxes (the predictor always draws a
# face), which the follow test tells apart: faces 0.10 (median; 95th percentile 0.50, 99th 0.66), face-free boxes
# 1.00 (median; 5th percentile 0.74; a blank region exactly 1). With these limits 4 of the 521 face boxes (0.8%) are
# dropped and 47 of the 1,521 face-free boxes (3.1%, on stripes, checks and plaid) kept (a limit of 0.6 drops 3% of
# the faces and keeps 1.4%). The detector is the first gate: it put no box on these pictures but two on a drawn
# pendant with two dark eye-like dots, which the check keeps too (follow 0.23: to the predictor it is a face).
# The check costs 5 shape-predictor fits, about 30-50 ms a box on one (shared) core.
EYE_DISTANCE = (0.25, 0.60)  # distance between the eye centres / box width; faces 0.27-0.53, median 0.41
EYES_TO_MOUTH = (0.28, 0.65)  # from the eyes' midpoint down to the mouth's centre / box height; faces 0.32-0.57
MAX_FOLLOW = 0.7  # landmarks may follow a moved box by at most this fraction of the move (a face holds them in place)
PROBE_MOVE = 0.125  # the box is moved by this fraction of its side, four ways, for the follow test


def _landmark_points(gray: np.ndarray, box) -> np.ndarray:
    from fer_lib.data.landmarks import landmarks_in_box

    x, y, w, h = box
    return landmarks_in_box(gray, (x, y, x + w - 1, y + h - 1))


def landmark_measures(gray: np.ndarray, box, points: np.ndarray | None = None) -> dict:
    """What the landmark check looks at, for a box (x, y, w, h) in ``gray``: the 68 points and the measures."""
    from fer_lib.data.landmarks import LEFT_EYE, MOUTH, RIGHT_EYE

    x, y, w, h = box
    pts = _landmark_points(gray, box) if points is None else points
    # the subject's right eye is on the image's left
    right_eye, left_eye = pts[RIGHT_EYE].mean(0), pts[LEFT_EYE].mean(0)
    mouth, nose = pts[MOUTH].mean(0), pts[30]
    eyes = (right_eye + left_eye) / 2
    key = np.stack([right_eye, left_eye, nose, mouth])
    inside = bool(((key[:, 0] >= x) & (key[:, 0] < x + w) & (key[:, 1] >= y) & (key[:, 1] < y + h)).all())
    # follow test: on a face the predictor finds the same eyes, nose and mouth when the box moves; on a region with
    # nothing face-like its points are placed relative to the box and move with it
    step = max(1, round(PROBE_MOVE * w))
    follow = []
    for dx, dy in ((step, 0), (-step, 0), (0, step), (0, -step)):
        moved = _landmark_points(gray, (x + dx, y + dy, w, h))
        follow.append(float(np.mean((moved - pts) @ np.array([dx, dy], np.float64)) / step ** 2))
    return {"points": pts, "inside": inside,
            "eyes_above_nose_above_mouth": bool(eyes[1] < nose[1] < mouth[1]),
            "right_eye_left_of_left_eye": bool(right_eye[0] < left_eye[0]),
            "eye_distance": float(np.linalg.norm(left_eye - right_eye) / w),
            "eyes_to_mouth": float((mouth[1] - eyes[1]) / h),
            "follow": float(np.mean(follow))}


def check_face(gray: np.ndarray, box) -> tuple[np.ndarray, str | None]:
    """The box's 68 landmarks (68, 2) in ``gray``'s pixels, and why the box is not a face (None when it is one)."""
    m = landmark_measures(gray, box)
    if not m["inside"]:
        return m["points"], "eyes, nose or mouth outside the box"
    if not (m["eyes_above_nose_above_mouth"] and m["right_eye_left_of_left_eye"]):
        return m["points"], "eyes, nose and mouth not in a face's order"
    if not EYE_DISTANCE[0] <= m["eye_distance"] <= EYE_DISTANCE[1]:
        return m["points"], (f"eyes {m['eye_distance']:.2f} of the box apart (a face: "
                             f"{EYE_DISTANCE[0]}-{EYE_DISTANCE[1]})")
    if not EYES_TO_MOUTH[0] <= m["eyes_to_mouth"] <= EYES_TO_MOUTH[1]:
        return m["points"], (f"mouth {m['eyes_to_mouth']:.2f} of the box below the eyes (a face: "
                             f"{EYES_TO_MOUTH[0]}-{EYES_TO_MOUTH[1]})")
    if m["follow"] > MAX_FOLLOW:
        return m["points"], (f"landmarks follow the box, not the image ({m['follow']:.0%} of a move; "
                             f"a face: < {MAX_FOLLOW:.0%})")
    return m["points"], None


def crop_box(box, scale: float = CROP_SCALE, shift_up: float = CROP_SHIFT_UP) -> tuple[int, int, int]:
    """The square FER2013-like frame (x0, y0, side) around a detected box: grown about the box's centre by
    ``scale`` and moved up by ``shift_up`` of the box's side."""
    x, y, w, h = box
    side = max(1, round(max(w, h) * scale))
    cx, cy = x + w / 2, y + h / 2 - shift_up * max(w, h)
    return round(cx - side / 2), round(cy - side / 2), side


def crop_face(gray: np.ndarray, box, scale: float = CROP_SCALE, shift_up: float = CROP_SHIFT_UP,
              size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) uint8: the FER2013-like frame around ``box``, edge pixels repeated where it leaves the photo,
    area-resampled down (cubic up, for faces smaller than ``size``)."""
    import cv2

    x0, y0, side = crop_box(box, scale, shift_up)
    h, w = gray.shape
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    region = gray[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
    return cv2.resize(region, (size, size), interpolation=interp)


# ---------------------------------------------------------------------------------------------
# prediction


def classify_faces(model, faces: np.ndarray, input_size: int = IMAGE_SIZE, device="cpu", tta: str = "flip",
                   temperature: float = 1.0) -> np.ndarray:
    """Class probabilities (N, 7) for uint8 faces (N, 48, 48): softmax of the TTA logits divided by ``temperature``
    (the run's calibration; 1 gives the raw softmax)."""
    import torch

    from fer_lib.model.inference import predict_logits

    if len(faces) == 0:
        return np.zeros((0, len(CLASS_NAMES)), np.float32)
    logits = predict_logits(model, np.ascontiguousarray(faces), input_size, tta=tta, device=device)
    return torch.softmax(logits / float(temperature), dim=1).numpy()


def classify_photo(image, model, input_size: int = IMAGE_SIZE, device="cpu", max_side: int = MAX_DETECT_SIDE,
                   tta: str = "flip", calibration: dict | None = None, dropped: list | None = None) -> list[Face]:
    """Every face found in ``image`` (PIL image or gray/RGB array) that passes the landmark check, cropped like
    FER2013 and classified. ``calibration`` (read_calibration's dict) sets the temperature and the uncertain
    threshold; the reasons for dropped boxes are appended to ``dropped`` when given."""
    gray = to_gray(image)
    boxes, points, why = find_faces(gray, max_side=max_side)
    if dropped is not None:
        dropped.extend(why)
    crops = (np.stack([crop_face(gray, b) for b in boxes]) if len(boxes)
             else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8))
    temperature = float(calibration["temperature"]) if calibration else 1.0
    probs = classify_faces(model, crops, input_size, device, tta=tta, temperature=temperature)
    threshold = float(calibration["uncertain_below"]) if calibration else None
    return [Face(tuple(int(v) for v in b), p, c, pts, None if threshold is None else bool(p.max() < threshold))
            for b, p, c, pts in zip(boxes, probs, crops, points)]


# ---------------------------------------------------------------------------------------------
# a picture composed of dataset faces (the notebook's default input, and the tests')


def compose_faces(faces: np.ndarray, size_range: tuple[int, int] = (96, 200), sides=None, background: int = 128,
                  per_row: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(canvas (H, W) uint8, boxes (N, 4) x, y, w, h): the 48x48 ``faces`` upscaled (bicubic) to ``sides``
    (default: drawn uniformly from ``size_range`` with ``seed``) and laid out in rows on a plain canvas, a
    third of the largest side apart."""
    import cv2

    n = len(faces)
    if sides is None:
        sides = np.random.default_rng(seed).integers(size_range[0], size_range[1] + 1, n)
    sides = np.asarray(sides, dtype=np.int64)
    per_row = per_row or max(1, int(np.ceil(np.sqrt(n))))
    gap = int(sides.max(initial=IMAGE_SIZE)) // 3 + 8
    rows = [list(range(i, min(i + per_row, n))) for i in range(0, n, per_row)]
    width = max((sum(sides[r]) + gap * (len(r) + 1) for r in rows), default=gap)
    height = sum(int(sides[r].max()) + gap for r in rows) + gap
    canvas = np.full((height, width), background, np.uint8)
    boxes = np.zeros((n, 4), np.int64)
    y = gap
    for r in rows:
        x, row_h = gap, int(sides[r].max())
        for i in r:
            s = int(sides[i])
            top = y + (row_h - s) // 2
            canvas[top:top + s, x:x + s] = cv2.resize(faces[i], (s, s), interpolation=cv2.INTER_CUBIC)
            boxes[i] = (x, top, s, s)
            x += s + gap
        y += row_h + gap
    return canvas, boxes


def match_faces(found: list[Face] | np.ndarray, placed: np.ndarray) -> np.ndarray:
    """For each placed box, the index of the found face whose box centre lies inside it, else -1."""
    found_boxes = np.asarray([f.box if isinstance(f, Face) else f for f in found], dtype=np.float64).reshape(-1, 4)
    centres = found_boxes[:, :2] + found_boxes[:, 2:] / 2
    out = np.full(len(placed), -1, np.int64)
    for i, (x, y, w, h) in enumerate(placed):
        inside = np.flatnonzero((centres[:, 0] >= x) & (centres[:, 0] < x + w) &
                                (centres[:, 1] >= y) & (centres[:, 1] < y + h))
        if len(inside):
            out[i] = inside[0]
    return out
