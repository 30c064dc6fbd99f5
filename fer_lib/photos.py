"""Faces in ordinary photos: find them (OpenCV's Haar cascade), crop them as FER2013 is cropped, classify, annotate.

The model only ever saw FER2013 faces: 48x48 gray, the face filling the frame. A photo is brought to that
form in four steps, each a function here:
  open_photo     any size, colour or gray, PNG/JPEG/..., EXIF orientation applied -> upright PIL image
  to_gray        ITU-R 601 luma, as PIL's "L" mode computes it
  detect_faces   the frontal-face Haar cascade that ships inside opencv-python-headless 4.x (nothing is
                 downloaded); photos larger than MAX_DETECT_SIDE are downscaled for detection only
  crop_face      the detected box grown to FER2013's framing (CROP_SCALE, measured), area-resampled to 48x48
then ``classify_faces`` predicts with flip test-time augmentation and ``annotate`` draws the boxes and labels.
``classify_photos`` does all of it for a batch of files (the `python -m fer_lib classify` command).
"""
from __future__ import annotations

import csv
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import CLASS_NAMES, IMAGE_SIZE
from .data import atomic_write

CASCADE_FILE = "haarcascade_frontalface_default.xml"  # in cv2.data.haarcascades (opencv-python-headless 4.x)
# FER2013's framing, measured rather than guessed (the cascade below on FER2013 test faces upscaled to 96-192 px):
# - pasted on a plain gray canvas (600 faces, 77% found), the box's side is 0.965 of the 48x48 frame (median;
#   quartiles 0.90 and 1.03); with the frame's border mirrored or repeated outwards instead (a photo's
#   surroundings continue past the face) it is 0.97-0.98. The box is centred on the frame (median offset < 0.5%
#   of the side, both axes), so the frame is the box grown about its centre by 1/0.98 .. 1/0.965 = 1.02 .. 1.04.
# - registration check: the scale at which the 48x48 crop of the detected box differs least from the original
#   face (mean absolute pixel difference, 300 mirrored-border faces) is 1.02 in the median, 1.04 on average.
# 1.03 sits in the middle of both (model agreement with predictions on the original faces: 76% at 1.0 and at
# 1.04, 73% at 1.1, 62% at 1.2, measured with a quick-profile model).
CROP_SCALE = 1.03
MAX_DETECT_SIDE = 1600  # photos with a longer side are downscaled for detection; boxes map back, crops use the original
MIN_FACE = 30  # smallest face side the cascade looks for, in pixels of the (downscaled) detection image
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # picked up from folders
CSV_NAME = "faces.csv"
CSV_COLUMNS = ["file", "face", "x", "y", "w", "h", *CLASS_NAMES, "label"]
# one colour per class for boxes and labels (from matplotlib's tab10; white text reads on each; no gray, which
# vanishes on gray photos)
CLASS_COLOURS = ("#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#e377c2")
NO_MODEL_HELP = ("Train one and ship it with the report: `make report DATA=path/to/fer2013` writes "
                 "report/fer2013/model/ (the quick recipe: add PROFILE=quick, then pass --run "
                 "report/fer2013-quick/model); or pass --run with a run folder made by `python -m fer_lib train` "
                 "(runs/<dataset>-<hash>/).")


class PhotoError(ValueError):
    """A photo that cannot be used; the message names the file and the problem."""


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in the upright photo's pixels
    probs: np.ndarray  # (7,) class probabilities: softmax of the flip-TTA logits
    crop: np.ndarray  # (48, 48) uint8: what the model saw

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


@lru_cache(maxsize=1)
def _cascade():
    import cv2

    if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 removed the Haar cascades
        raise RuntimeError(f"OpenCV {cv2.__version__} has no CascadeClassifier: install opencv-python-headless 4.x "
                           "(pip install -r requirements.txt)")
    path = Path(cv2.data.haarcascades) / CASCADE_FILE
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise RuntimeError(f"could not load the face detector {path}: reinstall opencv-python-headless")
    return cascade


def detect_faces(gray: np.ndarray, max_side: int = MAX_DETECT_SIDE, min_face: int = MIN_FACE) -> np.ndarray:
    """Boxes (K, 4) int64 as x, y, w, h in ``gray``'s pixels, in reading order (top row first, left to right).

    An image whose long side exceeds ``max_side`` is detected at that size (area-downscaled) and its boxes
    scaled back, so a 24-megapixel photo takes as long as a 2-megapixel one.
    """
    import cv2

    h, w = gray.shape
    scale = min(1.0, max_side / max(h, w))
    small = gray if scale == 1.0 else cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                 interpolation=cv2.INTER_AREA)
    if min(small.shape) < min_face:
        return np.zeros((0, 4), np.int64)
    boxes = _cascade().detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(min_face, min_face))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale
    boxes = np.round(boxes).astype(np.int64)
    return reading_order(boxes)


def reading_order(boxes: np.ndarray) -> np.ndarray:
    """Boxes sorted in rows from the top (a box whose centre is within half a median face height below the
    row's first centre joins that row), each row left to right: face 1 is the top-left one."""
    if len(boxes) < 2:
        return boxes
    cy = boxes[:, 1] + boxes[:, 3] / 2
    half = np.median(boxes[:, 3]) / 2
    row, rows, start = 0, np.zeros(len(boxes), np.int64), None
    for i in np.argsort(cy, kind="stable"):
        if start is not None and cy[i] - start > half:
            row += 1
            start = None
        start = cy[i] if start is None else start
        rows[i] = row
    return boxes[np.lexsort((boxes[:, 0], rows))]


def crop_box(box, scale: float = CROP_SCALE) -> tuple[int, int, int]:
    """The square FER2013-like frame (x0, y0, side) around a detected box: the box grown about its centre."""
    x, y, w, h = box
    side = max(1, round(max(w, h) * scale))
    return round(x + w / 2 - side / 2), round(y + h / 2 - side / 2), side


def crop_face(gray: np.ndarray, box, scale: float = CROP_SCALE, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) uint8: the FER2013-like frame around ``box``, edge pixels repeated where it leaves the photo,
    area-resampled down (cubic up, for faces smaller than ``size``)."""
    import cv2

    x0, y0, side = crop_box(box, scale)
    h, w = gray.shape
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    region = gray[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
    return cv2.resize(region, (size, size), interpolation=interp)


# ---------------------------------------------------------------------------------------------
# prediction


def classify_faces(model, faces: np.ndarray, input_size: int = IMAGE_SIZE, device="cpu") -> np.ndarray:
    """Class probabilities (N, 7) for uint8 faces (N, 48, 48): softmax of the flip-TTA logits."""
    import torch

    from .inference import predict_logits

    if len(faces) == 0:
        return np.zeros((0, len(CLASS_NAMES)), np.float32)
    logits = predict_logits(model, np.ascontiguousarray(faces), input_size, tta=True, device=device)
    return torch.softmax(logits, dim=1).numpy()


def classify_photo(image, model, input_size: int = IMAGE_SIZE, device="cpu",
                   max_side: int = MAX_DETECT_SIDE) -> list[Face]:
    """Every face found in ``image`` (PIL image or gray/RGB array), cropped like FER2013 and classified."""
    gray = to_gray(image)
    boxes = detect_faces(gray, max_side=max_side)
    crops = np.stack([crop_face(gray, b) for b in boxes]) if len(boxes) else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE),
                                                                                       np.uint8)
    probs = classify_faces(model, crops, input_size, device)
    return [Face(tuple(int(v) for v in b), p, c) for b, p, c in zip(boxes, probs, crops)]


# ---------------------------------------------------------------------------------------------
# drawing


def annotate(image, faces: list[Face]):
    """An RGB copy of ``image`` with each face's box and "label probability" drawn in its class colour."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    long_side = max(canvas.size)
    width = max(2, round(long_side / 400))
    for i, face in enumerate(faces, 1):
        x, y, w, h = face.box
        colour = CLASS_COLOURS[int(face.probs.argmax())]
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=width)
        text = f"{f'{i} ' if len(faces) > 1 else ''}{face.label} {face.prob:.0%}"
        font = ImageFont.load_default(size=int(np.clip(w / 6, 11, 120)))
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
                   true_labels: np.ndarray | None = None) -> str:
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
    if not faces:
        return text + ": it looks for upright, roughly frontal faces at least " \
                      f"{MIN_FACE} px wide (in a photo downscaled to {MAX_DETECT_SIDE} px)."
    counts = Counter(f.label for f in faces)
    text += "; the model calls " + ("it" if len(faces) == 1 else "them") + " "
    text += ", ".join(f"{label} ({n})" if len(faces) > 1 else f"{label} ({faces[0].prob:.0%} probability)"
                      for label, n in counts.most_common()) + "."
    if placed is not None and true_labels is not None and len(hit):
        right = sum(faces[match[i]].label == CLASS_NAMES[int(true_labels[i])] for i in hit)
        text += f" {right} of the {len(hit)} found faces match their true label."
    return text


# ---------------------------------------------------------------------------------------------
# a batch of files: the `classify` command


def expand_inputs(paths, exclude: Path | None = None) -> list[Path]:
    """The image files named by ``paths``: files as given, folders searched recursively for IMAGE_SUFFIXES
    (hidden files and anything under ``exclude``, the output folder, skipped). Order kept, duplicates dropped."""
    exclude = Path(exclude).resolve() if exclude is not None else None
    out, seen = [], set()
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
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


def _annotated_name(path: Path, taken: set[str]) -> str:
    """<stem>.faces.jpg for JPEG inputs (kept small), <stem>.faces.png otherwise; unique within the batch."""
    ext = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    name, k = f"{path.stem}.faces{ext}", 2
    while name in taken:
        name, k = f"{path.stem}-{k}.faces{ext}", k + 1
    taken.add(name)
    return name


def classify_photos(paths: list[Path], model, input_size: int, out_dir: Path, device="cpu",
                    progress: bool = True) -> list[PhotoResult]:
    """Classify every face in every file; write OUT/<stem>.faces.<ext> per readable file and OUT/faces.csv
    (one row per face). A file that cannot be read is recorded in its result and the batch goes on."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, taken = [], set()
    for path in tqdm(paths, desc="photos", unit="image", disable=not progress or len(paths) < 10, file=sys.stderr):
        result = PhotoResult(Path(path))
        results.append(result)
        try:
            image = open_photo(path)
        except PhotoError as err:
            result.error = str(err)
            continue
        result.size = image.size
        result.faces = classify_photo(image, model, input_size, device)
        target = out_dir / _annotated_name(Path(path), taken)
        save_image(annotate(image, result.faces), target)
        result.annotated = target
    write_faces_csv(out_dir / CSV_NAME, results)
    return results


def save_image(image, path: Path) -> None:
    """Write a PIL image atomically: JPEG (quality 92) for .jpg/.jpeg, PNG otherwise."""
    jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="JPEG", quality=92) if jpeg else image.save(tmp, "PNG"))


def write_faces_csv(path: Path, results: list[PhotoResult]) -> None:
    """One row per face: file, face number, box, the 7 probabilities, label (written atomically)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in results:
                for i, face in enumerate(r.faces, 1):
                    w.writerow([str(r.path), i, *face.box, *(f"{p:.4f}" for p in face.probs), face.label])

    atomic_write(Path(path), write)


def faces_table(results: list[PhotoResult]):
    """A DataFrame with one row per face (file, face, box, label, probability, the 7 probabilities)."""
    import pandas as pd

    rows = [{"file": r.path.name, "face": i, "x": f.box[0], "y": f.box[1], "w": f.box[2], "h": f.box[3],
             "label": f.label, "probability": f.prob, **dict(zip(CLASS_NAMES, map(float, f.probs)))}
            for r in results for i, f in enumerate(r.faces, 1)]
    return pd.DataFrame(rows, columns=["file", "face", "x", "y", "w", "h", "label", "probability", *CLASS_NAMES])


def format_table(results: list[PhotoResult]) -> str:
    """The printed summary: a line per face, per image without faces and per unreadable file, then totals."""
    name_w = min(40, max((len(r.path.name) for r in results), default=4))
    lines = [f"{'file':<{name_w}}  face  {'box x,y,w,h':<20}  {'label':<8}  prob"]
    for r in results:
        name = r.path.name if len(r.path.name) <= name_w else r.path.name[:name_w - 1] + "~"
        if r.error:
            lines.append(f"{name:<{name_w}}  -     unreadable (see below)")
        elif not r.faces:
            lines.append(f"{name:<{name_w}}  -     no face found")
        for i, f in enumerate(r.faces, 1):
            lines.append(f"{name:<{name_w}}  {i:<4}  {','.join(map(str, f.box)):<20}  {f.label:<8}  {f.prob:.2f}")
    n_faces = sum(len(r.faces) for r in results)
    counts = Counter(f.label for r in results for f in r.faces)
    no_face = sum(1 for r in results if not r.error and not r.faces)
    failed = sum(1 for r in results if r.error)
    summary = f"{len(results)} image(s): {n_faces} face(s)"
    if counts:
        summary += " (" + ", ".join(f"{n} {label}" for label, n in counts.most_common()) + ")"
    summary += f"; {no_face} with no face; {failed} unreadable"
    return "\n".join(lines + [summary])


def has_model(run_dir: Path) -> bool:
    from .runs import WEIGHTS_FILE

    run_dir = Path(run_dir)
    return (run_dir / "config.json").is_file() and any((run_dir / n).is_file()
                                                       for n in (WEIGHTS_FILE, "best.pt", "checkpoint.pt"))


def run_classify(inputs: list[str], run_dir: str | Path, out_dir: str | Path, device: str = "auto") -> int:
    """The `classify` command; returns its exit status: 0 when every file was read (images without a face
    included), 1 when a file could not be read (the others are still processed), 2 when there is no model."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not has_model(run_dir):
        print(f"error: no trained model in {run_dir} (expected config.json and weights.pt). {NO_MODEL_HELP}",
              file=sys.stderr)
        return 2
    paths = expand_inputs(inputs, exclude=out_dir)
    for p in map(Path, inputs):
        if p.is_dir() and not any(f.resolve().is_relative_to(p.resolve()) for f in paths):
            print(f"warning: {p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder", file=sys.stderr)
    if not paths:
        print("error: nothing to classify", file=sys.stderr)
        return 1
    from .runs import load_trained, resolve_device

    dev = resolve_device(device)
    model, config = load_trained(run_dir, dev)
    results = classify_photos(paths, model, config.input_size, out_dir, device=dev)
    print(format_table(results))
    written = sum(1 for r in results if r.annotated)
    print(f"wrote {out_dir / CSV_NAME} and {written} annotated image(s) in {out_dir}/")
    errors = [r.error for r in results if r.error]
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0
