"""Faces in photos and clips: find them (dlib's HOG detector), check each by its landmarks, crop as FER2013, classify.

The model only ever saw FER2013 faces: 48x48 gray, the face filling the frame. A photo is brought to that
form in steps, each a function here:
  open_photo     any size, colour or gray, PNG/JPEG/..., EXIF orientation applied -> upright PIL image
  to_gray        ITU-R 601 luma, as PIL's "L" mode computes it
  detect_faces   dlib's HOG frontal-face detector with one upsampling pass (built into dlib, nothing is
                 downloaded); photos larger than MAX_DETECT_SIDE are downscaled for detection only
  check_face     the box's 68 landmarks (dlib's shape predictor) must form a plausible face; others are dropped
  crop_face      the detected box grown and moved to FER2013's framing (CROP_SCALE, CROP_SHIFT_UP, measured),
                 area-resampled to 48x48
then ``classify_faces`` predicts with the run's test-time views and, when the run has a calibration, its
temperature (``annotate`` draws boxes, labels and faint landmarks). ``run_classify`` does all of it for files,
folders, videos and folders of frames (the `python -m fer_lib classify` command).
"""
from __future__ import annotations

import csv
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_lib import CLASS_NAMES, IMAGE_SIZE
from fer_lib.core.io import IMAGE_SUFFIXES, atomic_write

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
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")  # decoded by OpenCV
SAMPLE_FPS = 5.0  # frames per second classified from a video, by default (a facial expression lasts 0.5-4 s)
TRACK_IOU = 0.3  # a face in a frame continues a track whose last box it overlaps at least this much (IoU)
TRACK_GAP = 5  # sampled frames a track may miss (a blink, a turned head) and still continue
CSV_NAME = "faces.csv"
# frame and time_s are empty for photos; for a clip, face is the track number (the same person across frames).
# uncertain is 1 when the calibrated top probability is below the run's threshold, 0 above, empty without calibration.
CSV_COLUMNS = ["file", "frame", "time_s", "face", "x", "y", "w", "h", *CLASS_NAMES, "label", "uncertain"]
# one colour per class for boxes and labels (from matplotlib's tab10; white text reads on each; no gray, which
# vanishes on gray photos)
CLASS_COLOURS = ("#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#e377c2")
NO_MODEL_HELP = ("Train one and ship it with the report: `make report DATA=path/to/fer2013` writes "
                 "report/fer2013/model/ (the quick recipe: add PROFILE=quick, then pass --run "
                 "report/fer2013-quick/model); or pass --run with a run folder made by `python -m fer_lib train` "
                 "(runs/<dataset>-<hash>/).")


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


@dataclass
class ClipResult:
    """A video or a folder of frames: one PhotoResult per sampled frame."""

    path: Path
    frames: list[PhotoResult] = field(default_factory=list)
    fps: float | None = None  # the video's own frame rate (None for a folder of frames)
    every: int = 1  # every how many frames one was classified
    error: str | None = None
    plot: Path | None = None  # the track plot written for it

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.frames)



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
# drawing


def face_text(face: Face, number: int | None = None) -> str:
    """'2 Happy 83%', with '?' after the label when the face is uncertain ('2 Sad? 38%')."""
    mark = "?" if face.uncertain else ""
    return f"{f'{number} ' if number else ''}{face.label}{mark} {face.prob:.0%}"


def annotated_alt(faces: list[Face], source: str) -> str:
    """Alt text of an annotated copy: what it shows and each box's label, as drawn."""
    shown = source[:1].upper() + source[1:]
    if not faces:
        return f"{shown} with no face box: the detector found no face."
    labels = "; ".join(face_text(f, i) for i, f in enumerate(faces, 1))
    return (f"{shown} with {len(faces)} detector box{'es' if len(faces) != 1 else ''}, "
            f"each labelled with its number, the model's class and its probability ('?': uncertain): {labels}. "
            "Faint dots mark each face's 68 landmarks.")


def annotate(image, faces: list[Face]):
    """An RGB copy of ``image`` with each face's box and "label probability" in its class colour (an uncertain face:
    "label? probability" and a thinner box) and its 68 landmarks as faint dots."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).convert("RGB")
    dots = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw_dots = ImageDraw.Draw(dots)
    long_side = max(canvas.size)
    width = max(2, round(long_side / 400))
    for face in faces:  # landmarks first, faint (white, 45% opaque, dark rim): what the check and the crop used
        if face.landmarks is None:
            continue
        r = max(1.0, face.box[2] / 90)
        for px, py in face.landmarks:
            draw_dots.ellipse([px - r, py - r, px + r, py + r], fill=(255, 255, 255, 115), outline=(0, 0, 0, 70))
    canvas = Image.alpha_composite(canvas.convert("RGBA"), dots).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for i, face in enumerate(faces, 1):
        x, y, w, h = face.box
        colour = CLASS_COLOURS[int(face.probs.argmax())]
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour,
                       width=max(1, width // 2) if face.uncertain else width)
        text = face_text(face, i if len(faces) > 1 else None)
        # at least 1/70 of the long side: about 13 px on the page when the copy is shown 900 px wide
        font = ImageFont.load_default(size=int(np.clip(max(w / 6, long_side / 70), 11, 120)))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th, m = right - left, bottom - top, max(2, (bottom - top) // 4)
        ty = y - th - 2 * m if y - th - 2 * m >= 0 else y  # above the box, or inside it at the top edge
        draw.rectangle([x, ty, x + tw + 2 * m, ty + th + 2 * m], fill=colour)
        draw.text((x + m - left, ty + m - top), text, fill="white", font=font)
    if not faces:
        font = ImageFont.load_default(size=int(np.clip(long_side / 30, 11, 120)))
        draw.text((width * 2, width * 2), "no face found", fill="#d62728", font=font, stroke_width=max(1, width // 2),
                  stroke_fill="white")
    return canvas


def plot_tracks(clip: ClipResult, max_tracks: int = 6, uncertain_below: float | None = None):
    """A matplotlib Figure: for each of the longest ``max_tracks`` face tracks of a clip, its 7 class probabilities
    over time (seconds for a video, frame numbers for a folder of frames), one panel per track; a dashed line at
    the uncertain threshold when given."""
    from matplotlib.figure import Figure

    tracks: dict[int, list[tuple[float, np.ndarray, bool]]] = {}
    for frame in clip.frames:
        t = frame.time if frame.time is not None else float(frame.frame)
        for face in frame.faces:
            tracks.setdefault(face.track, []).append((t, face.probs, bool(face.uncertain)))
    shown = sorted(tracks, key=lambda k: (-len(tracks[k]), k))[:max_tracks]
    fig = Figure(figsize=(7, 1.7 * max(1, len(shown)) + 0.6), layout="constrained")
    axes = fig.subplots(max(1, len(shown)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, k in zip(axes, sorted(shown)):
        times = np.array([t for t, _, _ in tracks[k]])
        probs = np.stack([p for _, p, _ in tracks[k]])
        for c, name in enumerate(CLASS_NAMES):
            ax.plot(times, probs[:, c], color=CLASS_COLOURS[c], lw=1.5, marker="." if len(times) < 40 else None,
                    label=name)
        if uncertain_below is not None:
            ax.axhline(uncertain_below, color="0.4", lw=0.8, ls="--")
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"face {k}\nprobability")
        ax.grid(alpha=0.3)
    if not shown:
        axes[0].text(0.5, 0.5, "no face found in any sampled frame", ha="center", va="center",
                     transform=axes[0].transAxes)
    axes[-1].set_xlabel("time (s)" if clip.fps else "frame")
    axes[0].legend(ncol=7, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.02), frameon=False)
    fig.suptitle(f"{clip.path.name}: expression of each face over time", fontsize=10)
    return fig


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


def faces_sentence(faces: list[Face], source: str, placed: np.ndarray | None = None,
                   true_labels: np.ndarray | None = None, rejected: int = 0) -> str:
    """A computed Markdown sentence on what was found in ``source`` and how it was classified; with ``placed``
    (a composed picture's boxes) it also says how many placed faces were found, and with their
    ``true_labels`` how many of those the model got right."""
    if placed is not None:
        match = match_faces(faces, placed)
        hit = np.flatnonzero(match >= 0)
        spurious = len(faces) - len(set(match[hit].tolist()))
        text = f"The detector found **{len(hit)} of the {len(placed)} faces** in {source}"
        text += f" (and {spurious} box{'es' if spurious != 1 else ''} on no face)" if spurious else ""
    else:
        text = f"The detector found **{len(faces)} face{'s' if len(faces) != 1 else ''}** in {source}"
    if rejected:
        text += f"; the landmark check dropped {rejected} more box{'es' if rejected != 1 else ''}"
    if not faces:
        return text + ": it looks for upright, roughly frontal faces at least " \
                      f"{MIN_FACE} px wide (in a photo downscaled to {MAX_DETECT_SIDE} px)."
    counts = Counter(f.label for f in faces)
    text += "; the model calls " + ("it" if len(faces) == 1 else "them") + " "
    text += ", ".join(f"{label} ({n})" if len(faces) > 1 else f"{label} ({faces[0].prob:.0%} probability)"
                      for label, n in counts.most_common()) + "."
    n_uncertain = sum(bool(f.uncertain) for f in faces)
    if n_uncertain:
        text += f" {n_uncertain} of them {'is' if n_uncertain == 1 else 'are'} marked uncertain (?)."
    if placed is not None and true_labels is not None and len(hit):
        right = sum(faces[match[i]].label == CLASS_NAMES[int(true_labels[i])] for i in hit)
        text += f" {right} of the {len(hit)} found faces match their true label."
    return text


# ---------------------------------------------------------------------------------------------
# clips: a video file or a folder of frames


def read_video(path: Path, fps: float = SAMPLE_FPS):
    """(the video's frame rate, every how many frames one is sampled, an iterator of (frame number, time in
    seconds, (H, W) uint8 gray frame)) for about ``fps`` frames per second; PhotoError naming the file when OpenCV
    cannot open it or decodes no frame."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise PhotoError(f"{path}: no such file")
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok or first is None:
        cap.release()
        raise PhotoError(f"{path}: corrupt or truncated video, or a format OpenCV cannot decode (no frame could be "
                         f"read; expected {', '.join(s.lstrip('.').upper() for s in VIDEO_SUFFIXES[:4])}, ...)")
    native = cap.get(cv2.CAP_PROP_FPS)
    native = float(native) if native and math.isfinite(native) and native > 0 else 25.0  # unknown: the common rate
    every = max(1, round(native / fps))

    def frames():
        try:
            index, frame = 0, first
            while frame is not None:
                if index % every == 0:
                    yield index, index / native, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
                index += 1
                if index % every == 0:  # decode the frames that are sampled, only grab the others
                    ok, frame = cap.read()
                    frame = frame if ok else None
                elif not cap.grab():
                    frame = None
        finally:
            cap.release()

    return native, every, frames()


def _natural_key(path: Path):
    """frame2.png before frame10.png."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def frame_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (not hidden), in natural name order: a clip's frames."""
    return sorted((f for f in Path(folder).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                   and not f.name.startswith(".")), key=_natural_key)


def iou(a, b) -> float:
    """Intersection over union of two boxes (x, y, w, h)."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter) if inter else 0.0


def assign_tracks(frames: list[PhotoResult], min_iou: float = TRACK_IOU, max_gap: int = TRACK_GAP) -> None:
    """Give every face a track number (from 1): a face continues the track whose last box overlaps it most (IoU at
    least ``min_iou``, greedily, best pairs first), if that track was seen in the last ``max_gap`` sampled frames;
    otherwise it starts a new track."""
    last: dict[int, tuple[int, tuple]] = {}  # track -> (sampled frame position, box)
    for pos, frame in enumerate(frames):
        live = [k for k, (seen, _) in last.items() if pos - seen <= max_gap]
        pairs = sorted(((iou(last[k][1], f.box), k, i) for k in live for i, f in enumerate(frame.faces)), reverse=True)
        used_tracks, used_faces = set(), set()
        for overlap, k, i in pairs:
            if overlap < min_iou:
                break
            if k not in used_tracks and i not in used_faces:
                frame.faces[i].track = k
                used_tracks.add(k)
                used_faces.add(i)
        for i, face in enumerate(frame.faces):
            if face.track is None:
                face.track = max(last, default=0) + 1
            last[face.track] = (pos, face.box)


def classify_clip(path: Path, model, input_size: int, device="cpu", tta: str = "flip",
                  calibration: dict | None = None, fps: float = SAMPLE_FPS, progress: bool = False) -> ClipResult:
    """Faces in every sampled frame of a video (about ``fps`` a second) or in every frame of a folder of frames,
    tracked from frame to frame. A video that cannot be decoded, or a frame that cannot be read, is the clip's error
    (frames read before it are kept)."""
    from tqdm import tqdm

    path = Path(path)
    clip = ClipResult(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            clip.error = f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder of frames"
            return clip
        frames = ((i, None, f) for i, f in enumerate(files))
        total = len(files)
    else:
        try:
            clip.fps, clip.every, frames = read_video(path, fps)
        except PhotoError as err:
            clip.error = str(err)
            return clip
        total = None
    for index, time, frame in tqdm(frames, desc=path.name, unit="frame", total=total, disable=not progress,
                                   file=sys.stderr, leave=False):
        if isinstance(frame, Path):
            try:
                frame = open_photo(frame)
            except PhotoError as err:
                clip.error = f"{path}: frame {index + 1}: {err}"
                break
        gray = to_gray(frame)
        dropped: list[str] = []
        result = PhotoResult(path, frame=index, time=time, size=(gray.shape[1], gray.shape[0]))
        result.faces = classify_photo(gray, model, input_size, device, tta=tta, calibration=calibration,
                                      dropped=dropped)
        result.rejected = len(dropped)
        clip.frames.append(result)
    assign_tracks(clip.frames)
    return clip


# ---------------------------------------------------------------------------------------------
# a batch of files: the `classify` command


def expand_inputs(paths, exclude: Path | None = None, frames: bool = False) -> list[Path]:
    """The image and video files named by ``paths``: files as given, folders searched recursively for
    IMAGE_SUFFIXES and VIDEO_SUFFIXES (hidden files and anything under ``exclude``, the output folder, skipped);
    with ``frames`` a folder is kept as one clip of frames. Order kept, duplicates dropped."""
    exclude = Path(exclude).resolve() if exclude is not None else None
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    out, seen = [], set()
    for p in map(Path, paths):
        if p.is_dir() and not frames:
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in suffixes and f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts)
                           and not (exclude is not None and f.resolve().is_relative_to(exclude)))
        else:
            found = [p]
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def is_clip(path: Path, frames: bool = False) -> bool:
    """A video file (by its suffix), or with ``frames`` a folder of frames."""
    path = Path(path)
    return path.suffix.lower() in VIDEO_SUFFIXES or (frames and path.is_dir())


def _annotated_name(path: Path, taken: set[str], kind: str = "faces", ext: str | None = None) -> str:
    """<stem>.faces.jpg for JPEG inputs (kept small), <stem>.faces.png otherwise (<stem>.tracks.png for a clip);
    unique within the batch."""
    ext = ext or (".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png")
    name, k = f"{path.stem}.{kind}{ext}", 2
    while name in taken:
        name, k = f"{path.stem}-{k}.{kind}{ext}", k + 1
    taken.add(name)
    return name


def show_progress(progress: bool = True) -> bool:
    """Progress bars only on a terminal: piped into a log, tqdm's carriage-return frames are noise."""
    return bool(progress) and sys.stderr.isatty()


def classify_photos(paths: list[Path], model, input_size: int, out_dir: Path, device="cpu",
                    progress: bool = True, tta: str = "flip", calibration: dict | None = None,
                    fps: float = SAMPLE_FPS, frames: bool = False) -> list[PhotoResult | ClipResult]:
    """Classify every face in every file; write OUT/<stem>.faces.<ext> per readable photo, OUT/<stem>.tracks.png per
    clip (video, or with ``frames`` a folder of frames) and OUT/faces.csv (one row per face and frame). A file that
    cannot be read is recorded in its result and the batch goes on. Progress shows only on a terminal."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = show_progress(progress)
    results, taken = [], set()
    for path in tqdm(paths, desc="photos", unit="file", disable=not bar or len(paths) < 10, file=sys.stderr):
        path = Path(path)
        if is_clip(path, frames):
            clip = classify_clip(path, model, input_size, device, tta, calibration, fps, progress=bar)
            results.append(clip)
            if clip.frames:
                target = out_dir / _annotated_name(path, taken, "tracks", ".png")
                threshold = float(calibration["uncertain_below"]) if calibration else None
                save_figure(plot_tracks(clip, uncertain_below=threshold), target)
                clip.plot = target
            continue
        result = PhotoResult(path)
        results.append(result)
        try:
            image = open_photo(path)
        except PhotoError as err:
            result.error = str(err)
            continue
        result.size = image.size
        dropped: list[str] = []
        result.faces = classify_photo(image, model, input_size, device, tta=tta, calibration=calibration,
                                      dropped=dropped)
        result.rejected = len(dropped)
        target = out_dir / _annotated_name(path, taken)
        save_image(annotate(image, result.faces), target)
        result.annotated = target
    write_faces_csv(out_dir / CSV_NAME, results)
    return results


def save_image(image, path: Path) -> None:
    """Write a PIL image atomically: JPEG (quality 92) for .jpg/.jpeg, PNG otherwise."""
    jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="JPEG", quality=92) if jpeg else image.save(tmp, "PNG"))


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib Figure as PNG atomically."""
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110, facecolor="white"))


def _photo_results(results) -> list[PhotoResult]:
    """Photos as they are, clips as their frames."""
    return [f for r in results for f in (r.frames if isinstance(r, ClipResult) else [r])]


def write_faces_csv(path: Path, results: list) -> None:
    """One row per face (and frame, for clips): file, frame, time, face (a clip's track), box, the 7 probabilities,
    label, uncertain (written atomically)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in _photo_results(results):
                for i, face in enumerate(r.faces, 1):
                    w.writerow([str(r.path), "" if r.frame is None else r.frame,
                                "" if r.time is None else f"{r.time:.3f}", face.track or i, *face.box,
                                *(f"{p:.4f}" for p in face.probs), face.label,
                                "" if face.uncertain is None else int(face.uncertain)])

    atomic_write(Path(path), write)


def faces_table(results: list[PhotoResult]):
    """A DataFrame with one row per face (file, face, box, label, probability, uncertain, the 7 probabilities)."""
    import pandas as pd

    rows = [{"file": r.path.name, "face": f.track or i, "x": f.box[0], "y": f.box[1], "w": f.box[2], "h": f.box[3],
             "label": f.label, "probability": f.prob, "uncertain": f.uncertain,
             **dict(zip(CLASS_NAMES, map(float, f.probs)))}
            for r in _photo_results(results) for i, f in enumerate(r.faces, 1)]
    return pd.DataFrame(rows, columns=["file", "face", "x", "y", "w", "h", "label", "probability", "uncertain",
                                       *CLASS_NAMES])


def _clip_lines(clip: ClipResult, name: str, name_w: int) -> list[str]:
    """A line per face track: frames seen, most frequent label and its share of the frames."""
    if clip.error and not clip.frames:
        return [f"{name:<{name_w}}  -     unreadable (see below)"]
    rate = (f"{len(clip.frames)} frames sampled, every {clip.every} of {clip.fps:g} fps" if clip.fps
            else f"{len(clip.frames)} frames")
    tracks: dict[int, list[Face]] = {}
    for frame in clip.frames:
        for face in frame.faces:
            tracks.setdefault(face.track, []).append(face)
    lines = [f"{name:<{name_w}}  clip  {rate}" + ("" if tracks else "; no face found")]
    for k, faces in sorted(tracks.items()):
        label, n = Counter(f.label for f in faces).most_common(1)[0]
        unsure = sum(bool(f.uncertain) for f in faces)
        lines.append(f"{'':<{name_w}}  {k:<4}  track in {len(faces)} frame(s): mostly {label} ({n / len(faces):.0%})"
                     + (f", {unsure} uncertain" if unsure else ""))
    return lines


def format_table(results: list) -> str:
    """The printed summary: a line per face (a '?' after an uncertain label), per image without faces, per clip
    track and per unreadable file, then totals."""
    name_w = min(40, max((len(r.path.name) for r in results), default=4))
    lines = [f"{'file':<{name_w}}  face  {'box x,y,w,h':<20}  {'label':<9}  prob"]
    for r in results:
        name = r.path.name if len(r.path.name) <= name_w else r.path.name[:name_w - 1] + "~"
        if isinstance(r, ClipResult):
            lines += _clip_lines(r, name, name_w)
            continue
        if r.error:
            lines.append(f"{name:<{name_w}}  -     unreadable (see below)")
        elif not r.faces:
            lines.append(f"{name:<{name_w}}  -     no face found")
        for i, f in enumerate(r.faces, 1):
            label = f.label + ("?" if f.uncertain else "")
            lines.append(f"{name:<{name_w}}  {i:<4}  {','.join(map(str, f.box)):<20}  {label:<9}  {f.prob:.2f}")
    photos = [r for r in results if not isinstance(r, ClipResult)]
    clips = [r for r in results if isinstance(r, ClipResult)]
    n_faces = sum(len(r.faces) for r in photos)
    counts = Counter(f.label for r in photos for f in r.faces)
    no_face = sum(1 for r in photos if not r.error and not r.faces)
    failed = sum(1 for r in results if r.error)
    summary = f"{len(photos)} image(s): {n_faces} face(s)"
    if counts:
        summary += " (" + ", ".join(f"{n} {label}" for label, n in counts.most_common()) + ")"
    n_uncertain = sum(bool(f.uncertain) for r in photos for f in r.faces)
    summary += f", {n_uncertain} uncertain (?)" if n_uncertain else ""
    summary += f"; {no_face} with no face"
    if clips:
        summary += f"; {len(clips)} clip(s), {sum(len(c.frames) for c in clips)} frame(s)"
    rejected = sum(r.rejected for r in results)
    summary += f"; {rejected} box(es) dropped by the landmark check" if rejected else ""
    summary += f"; {failed} unreadable"
    return "\n".join(lines + [summary])


def has_model(run_dir: Path) -> bool:
    from fer_lib.training.runs import WEIGHTS_FILE

    run_dir = Path(run_dir)
    return (run_dir / "config.json").is_file() and any((run_dir / n).is_file()
                                                       for n in (WEIGHTS_FILE, "best.pt", "checkpoint.pt"))


def calibration_note(run_dir: Path, calibration: dict | None) -> str:
    """The one console line on what the probabilities are."""
    if calibration is None:
        return (f"The model in {run_dir} has no calibration.json: probabilities are the model's raw softmax (usually "
                "over-confident) and no face is marked uncertain")
    return (f"Probabilities are calibrated on validation (temperature {float(calibration['temperature']):.2f}); "
            f"'?' marks a face whose top probability is below {float(calibration['uncertain_below']):.0%} (uncertain).")


def run_classify(inputs: list[str], run_dir: str | Path, out_dir: str | Path, device: str = "auto",
                 fps: float = SAMPLE_FPS, frames: bool = False) -> int:
    """The `classify` command; returns its exit status: 0 when every file was read (images without a face
    included), 1 when a file could not be read (the others are still processed), 2 when there is no model."""
    from fer_lib.model.calibration import read_calibration

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not has_model(run_dir):
        print(f"error: no trained model in {run_dir} (expected config.json and weights.pt). {NO_MODEL_HELP}",
              file=sys.stderr)
        return 2
    if not fps > 0:
        print(f"error: --fps must be above 0, got {fps}", file=sys.stderr)
        return 2
    paths = expand_inputs(inputs, exclude=out_dir, frames=frames)
    for p in map(Path, inputs):
        if p.is_dir() and not frames and not any(f.resolve().is_relative_to(p.resolve()) for f in paths):
            print(f"warning: {p}: no image or video files in this folder", file=sys.stderr)
    if not paths:
        print("error: nothing to classify", file=sys.stderr)
        return 1
    from fer_lib.training.runs import load_trained, prediction_tta, resolve_device

    dev = resolve_device(device)
    model, config = load_trained(run_dir, dev)
    calibration = read_calibration(run_dir)
    print(calibration_note(run_dir, calibration))  # once: what the probabilities are
    results = classify_photos(paths, model, config.input_size, out_dir, device=dev, tta=prediction_tta(run_dir),
                              calibration=calibration, fps=fps, frames=frames)
    print(format_table(results))
    written = sum(1 for r in results if getattr(r, "annotated", None))
    plots = sum(1 for r in results if getattr(r, "plot", None))
    print(f"wrote {out_dir / CSV_NAME}, {written} annotated image(s)"
          + (f" and {plots} track plot(s)" if plots else "") + f" in {out_dir}/")
    errors = [r.error for r in results if r.error]
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0
