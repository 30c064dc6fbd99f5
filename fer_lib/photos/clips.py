"""Clips: a video or a folder of frames, sampled, each frame's faces classified and tracked from frame to frame."""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
from tqdm import tqdm

from fer_lib.core.io import IMAGE_SUFFIXES
from fer_lib.photos.faces import PhotoError, PhotoResult, Reader, open_photo

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


def iou(a, b) -> float:
    """Intersection over union of two boxes (x, y, w, h)."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def assign_tracks(frames: list[PhotoResult]) -> None:
    """Number every face's track (from 1): a face continues the track whose last box overlaps it most (IoU at least
    TRACK_IOU, best pairs first) if that track was seen in the last TRACK_GAP sampled frames, else starts one."""
    last: dict[int, tuple[int, tuple]] = {}  # track -> (sampled frame position, box)
    for pos, frame in enumerate(frames):
        live = [k for k, (seen, _) in last.items() if pos - seen <= TRACK_GAP]
        pairs = sorted(((iou(last[k][1], f.box), k, f) for k in live for f in frame.faces), key=lambda p: -p[0])
        for overlap, k, face in pairs:
            if overlap >= TRACK_IOU and face.track is None and all(f.track != k for f in frame.faces):
                face.track = k
        for face in frame.faces:
            face.track = face.track or max(last, default=0) + 1
            last[face.track] = (pos, face.box)


def classify_clip(path: Path, read: Reader, fps: float = SAMPLE_FPS, progress: bool = False) -> ClipResult:
    """Faces in about ``fps`` frames a second of a video, or in every frame of a folder, tracked from frame to frame;
    no decodable frame, or an unreadable frame file, is the clip's error (frames read before it are kept)."""
    clip = ClipResult(Path(path))
    if clip.path.is_dir():
        files = sorted((f for f in clip.path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
                        and not f.name.startswith(".")),  # in natural order: frame2 before frame10
                       key=lambda f: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", f.name)])
        frames, total = ((i, None, f) for i, f in enumerate(files)), len(files)
    else:
        cap = cv2.VideoCapture(str(clip.path))
        native = cap.get(cv2.CAP_PROP_FPS)
        clip.fps = native if native > 0 and math.isfinite(native) else 25.0  # unknown: the common rate
        clip.every, total = max(1, round(clip.fps / fps)), None
        frames = ((i, i / clip.fps, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
                  for i, (_, frame) in enumerate(iter(cap.read, (False, None))) if i % clip.every == 0)
    for index, time, frame in tqdm(frames, desc=clip.path.name, unit="frame", total=total, disable=not progress,
                                   file=sys.stderr, leave=False):
        try:
            image = open_photo(frame) if isinstance(frame, Path) else frame
        except PhotoError as err:
            clip.error = f"{clip.path}: frame {index + 1}: {err}"
            break
        faces, dropped = read(image)
        clip.frames.append(PhotoResult(clip.path, faces, rejected=len(dropped), frame=index, time=time))
    if not clip.frames and not clip.error:
        clip.error = (f"{clip.path}: no image files in this folder of frames" if clip.path.is_dir() else
                      f"{clip.path}: no frame could be read (missing, corrupt or truncated, or a format OpenCV "
                      "cannot decode)")
    assign_tracks(clip.frames)
    return clip
