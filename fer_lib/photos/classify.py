"""The `classify` command: every face in photos, folders and clips classified, drawn on annotated copies and plots,
and written to faces.csv (faces.py finds, crops and classifies; clips.py samples and tracks clips)."""
from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from fer_lib import CLASS_NAMES
from fer_lib.core.io import IMAGE_SUFFIXES, atomic_write
from fer_lib.photos.clips import SAMPLE_FPS, VIDEO_SUFFIXES, ClipResult, classify_clip
from fer_lib.photos.faces import Face, PhotoError, PhotoResult, classify_photo, open_photo

CSV_NAME = "faces.csv"
# frame and time_s are empty for photos; for a clip, face is the track number (the same person across frames).
# uncertain is 1 when the calibrated top probability is below the run's threshold, 0 above, empty without calibration.
CSV_COLUMNS = ["file", "frame", "time_s", "face", "x", "y", "w", "h", *CLASS_NAMES, "label", "uncertain"]
# one colour per class for boxes and labels (from matplotlib's tab10; white text reads on each; no gray, which
# vanishes on gray photos)
CLASS_COLOURS = ("#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#e377c2")
NO_MODEL_HELP = ("The project ships its model in report/fer2013/model/ (the default); every report carries the "
                 "model it was rendered from (report/<dataset>/model/, e.g. report/fer2013-quick/model after "
                 "`make report DATA=path/to/fer2013 PROFILE=quick`); or pass --run with a run folder made by "
                 "`python -m fer_lib train` (runs/<dataset>-<hash>/).")


# ---------------------------------------------------------------------------------------------
# drawing


def prob_text(prob: float, uncertain_below: float | None = None) -> str:
    """'83%'; with one decimal ('75.3%') where the whole percent would read as the uncertainty threshold, so that
    the side of ``uncertain_below`` it lies on shows."""
    near = uncertain_below is not None and round(prob * 100) == round(uncertain_below * 100)
    return f"{prob:.1%}" if near else f"{prob:.0%}"


def face_text(face: Face, number: int | None = None, uncertain_below: float | None = None) -> str:
    """'2 Happy 83%', with '?' after the label when the face is uncertain ('2 Sad? 38%'); see :func:`prob_text`."""
    mark = "?" if face.uncertain else ""
    return f"{f'{number} ' if number else ''}{face.label}{mark} {prob_text(face.prob, uncertain_below)}"


def annotate(image, faces: list[Face], landmarks: bool = True, uncertain_below: float | None = None):
    """An RGB copy of ``image`` with each face's box and "label probability" in its class colour (an uncertain face:
    "label? probability" and a thinner box) and, with ``landmarks``, its 68 landmarks as faint dots."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).convert("RGB")
    dots = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw_dots = ImageDraw.Draw(dots)
    long_side = max(canvas.size)
    width = max(2, round(long_side / 400))
    for face in faces:  # landmarks first, faint (white, 45% opaque, dark rim): what the check and the crop used
        if face.landmarks is None or not landmarks:
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
        text = face_text(face, i if len(faces) > 1 else None, uncertain_below)
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
    if calibration is None:  # once: what the probabilities are
        print(f"The model in {run_dir} has no calibration.json: probabilities are the model's raw softmax (usually "
              "over-confident) and no face is marked uncertain")
    else:
        print(f"Probabilities are calibrated on validation (temperature {float(calibration['temperature']):.2f}); "
              f"'?' marks a face whose top probability is below {float(calibration['uncertain_below']):.0%}.")
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
