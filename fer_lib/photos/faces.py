"""Faces in a photo: found, checked, brought to FER2013's form and classified.

The model only ever saw FER2013 faces (48x48 gray, the face filling the frame). A photo is opened upright
(``open_photo``), made gray (``to_gray``: ITU-R 601 luma, as PIL's "L" mode), searched by dlib's HOG detector
(``detect_faces``), each box checked by its 68 landmarks (``check_face``), cropped in FER2013's framing and
area-resampled to 48x48 (``crop_face``), then classified with the run's test-time views and calibration
(``classify_photo``). ``compose_faces`` lays dataset faces on a canvas (the page's default picture, and the tests').
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_lib import CLASS_NAMES, IMAGE_SIZE

# HOG scans an 80x80 window; one upsampling pass finds faces from about 40 px. Measured on pictures composed of
# FER2013 test faces (192 a size, plain canvas): recall 69-81% at 40-200 px with the pass (1-78% without), no box
# off the faces; about 0.2 s per megapixel on one core. The landmark check then keeps 71-77%.
DETECT_UPSAMPLE = 1
MAX_DETECT_SIDE = 1600  # longer photos are downscaled for detection only; boxes map back, crops use the original
MIN_FACE = 40  # smallest face side found, in pixels of the (downscaled) detection image
DETECT_RECALL = 0.75  # share of FER2013 faces at 96-200 px found and kept by the landmark check (measured above)
# FER2013's frame around a HOG box (which runs from the brows to the chin), measured on 226 found test faces and
# by the crop that differs least from the original: the frame's side is 1.09-1.28 times the box's (median 1.14-1.2;
# HOG's pyramid quantises boxes in steps of 1.2) and its centre 0.06-0.13 of the side above the box's centre.
CROP_SCALE = 1.18
CROP_SHIFT_UP = 0.10
# A plausible face, measured on 521 face boxes and 1,521 boxes on 22 face-free pictures (textures, clothing,
# clutter): drops 0.8% of the faces, keeps 3.1% of the face-free boxes (stripes, checks, plaid).
EYE_DISTANCE = (0.25, 0.60)  # between the eye centres / box width; faces 0.27-0.53
EYES_TO_MOUTH = (0.28, 0.65)  # from the eyes' midpoint down to the mouth's centre / box height; faces 0.32-0.57
# On a face the predictor finds the same eyes, nose and mouth when the box moves; on a wall or a shirt its points
# are placed relative to the box and move with it (faces follow 0.10 of a move, median; face-free boxes 1.00).
MAX_FOLLOW = 0.7
PROBE_MOVE = 0.125  # the box is moved by this fraction of its side, four ways


class PhotoError(ValueError):
    """A photo or video that cannot be used; the message names the file and the problem."""


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in the upright photo's pixels
    probs: np.ndarray  # (7,) softmax of the test-time-view logits / the run's temperature (1 uncalibrated)
    crop: np.ndarray  # (48, 48) uint8: what the model saw
    landmarks: np.ndarray | None = None  # (68, 2) float32 x, y in the photo's pixels (iBUG 68 scheme)
    uncertain: bool | None = None  # top probability below the run's threshold; None when the run has no calibration
    track: int | None = None  # in a clip: the same person from frame to frame

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
    frame: int | None = None  # in a clip: the frame's number (0-based, at the video's own frame rate)
    time: float | None = None  # in a video: the frame's time in seconds


def open_photo(path: str | Path):
    """The photo as an upright PIL image in mode "L" or "RGB"; PhotoError naming the file when it cannot be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise PhotoError(f"{path}: " + ("is a folder, not an image" if path.is_dir() else "no such file"))
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated or corrupt file fails here, not later
            return _l_or_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise PhotoError(f"{path}: not an image file PIL can read (expected PNG, JPEG, BMP, WebP or TIFF)") from None
    except Image.DecompressionBombError as err:
        raise PhotoError(f"{path}: too large to open safely ({err})") from None
    except PermissionError:
        raise PhotoError(f"{path}: permission denied") from None
    except Exception as err:  # noqa: BLE001 - decoders raise many kinds (OSError, SyntaxError, struct.error, ...)
        raise PhotoError(f"{path}: corrupt or truncated image ({err.__class__.__name__}: {err})") from None


def _l_or_rgb(img):
    """16/32-bit gray scaled to 8 bits, transparency composited on white, any other mode to "L" or "RGB"."""
    from PIL import Image

    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        top = a.max(initial=0)
        if top > 255:  # 16-bit: 65535 / 257 = 255; a wider range is scaled to its maximum
            a = a / 257 if top <= 65535 else a * (255 / top)
        return Image.fromarray(a.round().clip(0, 255).astype(np.uint8), "L")
    if "A" in img.mode or "transparency" in img.info:
        flat = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA")).convert("RGB")
        return flat.convert("L") if img.mode == "LA" else flat
    return img.convert("RGB")  # P, CMYK, YCbCr, 1, ...


def to_gray(image) -> np.ndarray:
    """(H, W) uint8 gray of a PIL image or an (H, W) / (H, W, 3) array: ITU-R 601 luma, PIL's "L" formula."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        a = np.asarray(image)
        if a.ndim == 2:
            return a.astype(np.uint8, copy=False)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise ValueError(f"expected an (H, W) gray or (H, W, 3) RGB image, got shape {a.shape}")
        image = Image.fromarray(a[..., :3].astype(np.uint8, copy=False), "RGB")
    return np.asarray(_l_or_rgb(image).convert("L"))


def detect_faces(gray: np.ndarray, max_side: int = MAX_DETECT_SIDE, upsample: int = DETECT_UPSAMPLE) -> np.ndarray:
    """dlib's HOG boxes (K, 4) int64 x, y, w, h in ``gray``'s pixels, in reading order, unchecked. A photo with a
    side over ``max_side`` is detected area-downscaled to it, so 24 megapixels take as long as 2."""
    import cv2

    from fer_lib.data.landmarks import detect_faces as hog_faces

    h, w = gray.shape
    scale = min(1.0, max_side / max(h, w))
    small = gray if scale == 1 else cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                                               interpolation=cv2.INTER_AREA)
    if min(small.shape) < MIN_FACE:
        return np.zeros((0, 4), np.int64)
    boxes = np.array([(x0, y0, x1 - x0 + 1, y1 - y0 + 1) for (x0, y0, x1, y1), _ in hog_faces(small, upsample)],
                     np.float64).reshape(-1, 4)  # dlib's right and bottom are inclusive
    boxes = np.round(boxes / scale).astype(np.int64)
    return boxes[reading_order_index(boxes)]


def reading_order_index(boxes: np.ndarray) -> np.ndarray:
    """Rows from the top (a box whose centre lies within half a median face height below the row's first centre
    joins the row), each left to right: face 1 is the top-left one."""
    if len(boxes) < 2:
        return np.arange(len(boxes))
    cy, half = boxes[:, 1] + boxes[:, 3] / 2, np.median(boxes[:, 3]) / 2
    rows, row, start = np.zeros(len(boxes), np.int64), 0, -np.inf
    for i in np.argsort(cy, kind="stable"):
        if cy[i] - start > half:
            row, start = row + 1, cy[i]
        rows[i] = row
    return np.lexsort((boxes[:, 0], rows))


def check_face(gray: np.ndarray, box) -> tuple[np.ndarray, str | None]:
    """The box's 68 landmarks (68, 2) in ``gray``'s pixels, and why the box is not a face (None when it is one)."""
    from fer_lib.data.landmarks import LEFT_EYE, MOUTH, RIGHT_EYE, landmarks_in_box

    x, y, w, h = box

    def points(dx: int = 0, dy: int = 0) -> np.ndarray:
        return landmarks_in_box(gray, (x + dx, y + dy, x + dx + w - 1, y + dy + h - 1))

    pts = points()
    right_eye, left_eye = pts[RIGHT_EYE].mean(0), pts[LEFT_EYE].mean(0)  # the subject's right eye is on the left
    nose, mouth, eyes = pts[30], pts[MOUTH].mean(0), (right_eye + left_eye) / 2
    key = np.stack([right_eye, left_eye, nose, mouth])
    if not ((key[:, 0] >= x) & (key[:, 0] < x + w) & (key[:, 1] >= y) & (key[:, 1] < y + h)).all():
        return pts, "eyes, nose or mouth outside the box"
    if not (eyes[1] < nose[1] < mouth[1] and right_eye[0] < left_eye[0]):
        return pts, "eyes, nose and mouth not in a face's order"
    apart, below = np.linalg.norm(left_eye - right_eye) / w, (mouth[1] - eyes[1]) / h
    if not EYE_DISTANCE[0] <= apart <= EYE_DISTANCE[1]:
        return pts, f"eyes {apart:.2f} of the box apart (a face: {EYE_DISTANCE[0]}-{EYE_DISTANCE[1]})"
    if not EYES_TO_MOUTH[0] <= below <= EYES_TO_MOUTH[1]:
        return pts, f"mouth {below:.2f} of the box below the eyes (a face: {EYES_TO_MOUTH[0]}-{EYES_TO_MOUTH[1]})"
    step = max(1, round(PROBE_MOVE * w))
    follow = np.mean([np.mean((points(dx, dy) - pts) @ np.array([dx, dy], np.float64)) / step ** 2
                      for dx, dy in ((step, 0), (-step, 0), (0, step), (0, -step))])
    if follow > MAX_FOLLOW:
        return pts, f"landmarks follow the box, not the image ({follow:.0%} of a move; a face: < {MAX_FOLLOW:.0%})"
    return pts, None


def find_faces(gray: np.ndarray, max_side: int = MAX_DETECT_SIDE) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The detector's boxes that pass the landmark check: (boxes (K, 4) in reading order, their landmarks
    (K, 68, 2), why each other box was dropped)."""
    boxes, points, dropped = [], [], []
    for box in detect_faces(gray, max_side):
        pts, why = check_face(gray, tuple(int(v) for v in box))
        if why is None:
            boxes.append(box)
            points.append(pts)
        else:
            dropped.append(why)
    return np.array(boxes, np.int64).reshape(-1, 4), np.array(points, np.float32).reshape(-1, 68, 2), dropped


def crop_box(box, scale: float = CROP_SCALE, shift_up: float = CROP_SHIFT_UP) -> tuple[int, int, int]:
    """The square FER2013-like frame (x0, y0, side): the box grown ``scale`` times about its centre and moved up
    by ``shift_up`` of its side."""
    x, y, w, h = box
    side = max(1, round(max(w, h) * scale))
    return round(x + w / 2 - side / 2), round(y + h / 2 - shift_up * max(w, h) - side / 2), side


def crop_face(gray: np.ndarray, box, scale: float = CROP_SCALE, shift_up: float = CROP_SHIFT_UP,
              size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) uint8: the frame around ``box``, edge pixels repeated where it leaves the photo,
    area-resampled down (cubic up, for faces smaller than ``size``)."""
    import cv2

    x0, y0, side = crop_box(box, scale, shift_up)
    pad = max(0, -x0, -y0, x0 + side - gray.shape[1], y0 + side - gray.shape[0])
    padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else gray
    region = padded[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC)


def classify_faces(model, faces: np.ndarray, input_size: int = IMAGE_SIZE, device="cpu", tta: str = "flip",
                   temperature: float = 1.0) -> np.ndarray:
    """Probabilities (N, 7) of uint8 faces (N, 48, 48): softmax of the ``tta`` logits / ``temperature``."""
    import torch

    from fer_lib.model.inference import predict_logits

    if len(faces) == 0:
        return np.zeros((0, len(CLASS_NAMES)), np.float32)
    logits = predict_logits(model, np.ascontiguousarray(faces), input_size, tta=tta, device=device)
    return torch.softmax(logits / float(temperature), dim=1).numpy()


def classify_photo(image, model, input_size: int = IMAGE_SIZE, device="cpu", max_side: int = MAX_DETECT_SIDE,
                   tta: str = "flip", calibration: dict | None = None, dropped: list | None = None) -> list[Face]:
    """Every face in ``image`` (PIL image or array) that passes the landmark check, cropped like FER2013 and
    classified; ``calibration`` (read_calibration's dict) sets the temperature and the uncertain threshold. The
    reasons for dropped boxes are appended to ``dropped`` when given."""
    gray = to_gray(image)
    boxes, points, why = find_faces(gray, max_side=max_side)
    if dropped is not None:
        dropped.extend(why)
    crops = np.array([crop_face(gray, b) for b in boxes], np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    temperature = float(calibration["temperature"]) if calibration else 1.0
    probs = classify_faces(model, crops, input_size, device, tta=tta, temperature=temperature)
    threshold = float(calibration["uncertain_below"]) if calibration else None
    return [Face(tuple(int(v) for v in b), p, c, pts, None if threshold is None else bool(p.max() < threshold))
            for b, p, c, pts in zip(boxes, probs, crops, points)]


def compose_faces(faces: np.ndarray, size_range: tuple[int, int] = (96, 200), sides=None, background: int = 128,
                  per_row: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(canvas (H, W) uint8, boxes (N, 4) x, y, w, h): the 48x48 ``faces`` upscaled (bicubic) to ``sides``
    (default: drawn uniformly from ``size_range`` with ``seed``), laid in rows a third of the largest side apart."""
    import cv2

    n = len(faces)
    if sides is None:
        sides = np.random.default_rng(seed).integers(size_range[0], size_range[1] + 1, n)
    sides = np.asarray(sides, dtype=np.int64)
    per_row = per_row or max(1, int(np.ceil(np.sqrt(n))))
    gap = int(sides.max(initial=IMAGE_SIZE)) // 3 + 8
    rows = [list(range(i, min(i + per_row, n))) for i in range(0, n, per_row)]
    width = max((sum(sides[r]) + gap * (len(r) + 1) for r in rows), default=gap)
    canvas = np.full((sum(int(sides[r].max()) + gap for r in rows) + gap, width), background, np.uint8)
    boxes, y = np.zeros((n, 4), np.int64), gap
    for r in rows:
        x, row_h = gap, int(sides[r].max())
        for i in r:
            s, top = int(sides[i]), y + (row_h - int(sides[i])) // 2
            canvas[top:top + s, x:x + s] = cv2.resize(faces[i], (s, s), interpolation=cv2.INTER_CUBIC)
            boxes[i], x = (x, top, s, s), x + s + gap
        y += row_h + gap
    return canvas, boxes


def match_faces(found: list[Face] | np.ndarray, placed: np.ndarray) -> np.ndarray:
    """For each placed box, the index of the first found face whose box centre lies inside it, else -1."""
    found = np.asarray([f.box if isinstance(f, Face) else f for f in found], np.float64).reshape(-1, 4)
    cx, cy = (found[:, :2] + found[:, 2:] / 2).T
    inside = [np.flatnonzero((cx >= x) & (cx < x + w) & (cy >= y) & (cy < y + h)) for x, y, w, h in placed]
    return np.array([i[0] if len(i) else -1 for i in inside], np.int64)
