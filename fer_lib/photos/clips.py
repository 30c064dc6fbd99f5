"""Clips: a video or a folder of frames, sampled, each frame's faces classified and tracked from frame to frame."""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fer_lib.core.io import IMAGE_SUFFIXES
from fer_lib.photos.faces import PhotoError, PhotoResult, classify_photo, open_photo, to_gray

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")  # decoded by OpenCV
SAMPLE_FPS = 5.0  # frames per second classified from a video, by default (a facial expression lasts 0.5-4 s)
TRACK_IOU = 0.3  # a face continues the track whose last box it overlaps at least this much (IoU)
TRACK_GAP = 5  # sampled frames a track may miss (a blink, a turned head) and still continue


@dataclass
class ClipResult:
    """A video or a folder of frames: one PhotoResult per sampled frame."""
    path: Path
    frames: list[PhotoResult] = field(default_factory=list)
    fps: float | None = None  # the video's own frame rate (None for a folder of frames)
    every: int = 1  # one frame in ``every`` was classified
    error: str | None = None
    plot: Path | None = None  # the track plot written for it

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.frames)


def read_video(path: Path, fps: float = SAMPLE_FPS):
    """(the video's frame rate, one frame in how many is sampled, an iterator of (frame number, seconds, (H, W)
    uint8 gray frame)) for about ``fps`` frames a second; PhotoError naming the file when no frame decodes."""
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
                if index % every == 0:  # decode only the frames that are sampled, grab the others
                    frame = cap.read()[1]
                elif not cap.grab():
                    frame = None
        finally:
            cap.release()

    return native, every, frames()


def frame_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (not hidden), in natural name order (frame2 before frame10)."""
    return sorted((f for f in Path(folder).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                   and not f.name.startswith(".")),
                  key=lambda f: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", f.name)])


def iou(a, b) -> float:
    """Intersection over union of two boxes (x, y, w, h)."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy) if ix * iy else 0.0


def assign_tracks(frames: list[PhotoResult], min_iou: float = TRACK_IOU, max_gap: int = TRACK_GAP) -> None:
    """Number every face's track (from 1): a face continues the track whose last box overlaps it most (IoU at least
    ``min_iou``, best pairs first) if that track was seen in the last ``max_gap`` sampled frames, else starts one."""
    last: dict[int, tuple[int, tuple]] = {}  # track -> (sampled frame position, box)
    for pos, frame in enumerate(frames):
        live = [k for k, (seen, _) in last.items() if pos - seen <= max_gap]
        pairs = sorted(((iou(last[k][1], f.box), k, i) for k in live for i, f in enumerate(frame.faces)), reverse=True)
        taken = set()
        for overlap, k, i in pairs:
            if overlap >= min_iou and k not in taken and frame.faces[i].track is None:
                frame.faces[i].track = k
                taken.add(k)
        for face in frame.faces:
            face.track = face.track or max(last, default=0) + 1
            last[face.track] = (pos, face.box)


def classify_clip(path: Path, model, input_size: int, device="cpu", tta: str = "flip",
                  calibration: dict | None = None, fps: float = SAMPLE_FPS, progress: bool = False) -> ClipResult:
    """Faces in about ``fps`` frames a second of a video, or in every frame of a folder, tracked from frame to
    frame. A video that cannot be decoded, or a frame that cannot be read, is the clip's error (frames read before
    it are kept)."""
    from tqdm import tqdm

    path, clip = Path(path), ClipResult(Path(path))
    if path.is_dir():
        files = frame_files(path)
        if not files:
            clip.error = f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder of frames"
            return clip
        frames, total = ((i, None, f) for i, f in enumerate(files)), len(files)
    else:
        try:
            clip.fps, clip.every, frames = read_video(path, fps)
        except PhotoError as err:
            clip.error = str(err)
            return clip
        total = None
    for index, time, frame in tqdm(frames, desc=path.name, unit="frame", total=total, disable=not progress,
                                   file=sys.stderr, leave=False):
        try:
            gray = to_gray(open_photo(frame) if isinstance(frame, Path) else frame)
        except PhotoError as err:
            clip.error = f"{path}: frame {index + 1}: {err}"
            break
        dropped: list[str] = []
        faces = classify_photo(gray, model, input_size, device, tta=tta, calibration=calibration, dropped=dropped)
        clip.frames.append(PhotoResult(path, faces, (gray.shape[1], gray.shape[0]), rejected=len(dropped),
                                       frame=index, time=time))
    assign_tracks(clip.frames)
    return clip
