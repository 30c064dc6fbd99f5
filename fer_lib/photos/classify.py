"""The `classify` command (photos, folders and clips to annotated copies, track plots and faces.csv) and Q7's page
(one picture: yours, or validation faces composed on a canvas)."""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from fer_lib import CLASS_NAMES
from fer_lib.core.io import IMAGE_SUFFIXES, atomic_write
from fer_lib.photos.clips import SAMPLE_FPS, VIDEO_SUFFIXES, ClipResult, classify_clip
from fer_lib.photos.faces import PhotoError, PhotoResult, Reader, compose_faces, match_faces, open_photo
from fer_lib.training.runs import WEIGHTS_FILE, resolve_device

# frame and time_s are empty for photos; for a clip, face is the track number (the same person across frames);
# uncertain is 1 or 0 against the run's calibrated threshold, empty without calibration
CSV_COLUMNS = ["file", "frame", "time_s", "face", "x", "y", "w", "h", *CLASS_NAMES, "label", "uncertain"]
# a colour per class (matplotlib's tab10 without its gray, which vanishes on gray photos; white text reads on each)
CLASS_COLOURS = ("#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#e377c2")


def prob_text(prob: float, uncertain_below: float | None = None) -> str:
    """'83%'; '75.3%' where the whole percent would read as the uncertain threshold, so its side shows."""
    near = uncertain_below is not None and round(prob * 100) == round(uncertain_below * 100)
    return f"{prob:.1%}" if near else f"{prob:.0%}"


def annotate(image, faces: list, landmarks: bool = True, uncertain_below: float | None = None):
    """An RGB copy of ``image`` with each face's box and "number label probability" in its class colour (an
    uncertain face: "label?" and a thinner box) and, with ``landmarks``, its 68 landmarks as faint dots."""
    canvas = (image if isinstance(image, Image.Image) else Image.fromarray(image)).convert("RGBA")
    long_side, dots = max(canvas.size), Image.new("RGBA", canvas.size)
    width = max(2, round(long_side / 400))
    for face in faces if landmarks else []:  # what the check and the crop used: white, 45% opaque, dark rim
        r = max(1.0, face.box[2] / 90)
        for px, py in face.landmarks:
            ImageDraw.Draw(dots).ellipse([px - r, py - r, px + r, py + r], (255, 255, 255, 115), (0, 0, 0, 70))
    canvas = Image.alpha_composite(canvas, dots).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for i, face in enumerate(faces, 1):
        x, y, w, h = face.box
        colour = CLASS_COLOURS[int(face.probs.argmax())]
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=width // 2 if face.uncertain else width)
        text = (f"{f'{i} ' if len(faces) > 1 else ''}{face.label}{'?' if face.uncertain else ''} "
                f"{prob_text(face.prob, uncertain_below)}")
        # one size for every label, 1/50 of the long side: about 18 px on the page when shown 900 px wide
        font = ImageFont.load_default(size=int(np.clip(long_side / 50, 12, 120)))
        m = max(2, int(font.size) // 6)
        at, anchor = ((x + m, y - m), "ld") if draw.textbbox((x, y - m), text, font, "ld")[1] >= m else \
            ((x + m, y + m), "la")  # above the box, else inside it
        draw.rectangle(list(np.add(draw.textbbox(at, text, font, anchor), (-m, -m, m, m))), fill=colour)
        draw.text(at, text, fill="white", font=font, anchor=anchor)
    return canvas


def plot_tracks(clip: ClipResult, uncertain_below: float | None = None):
    """A Figure: the 7 class probabilities over time (seconds, or frame numbers for a folder) of the six longest face
    tracks of a clip with faces, a panel each; a dashed line at the uncertain threshold when given."""
    rows = pd.DataFrame([(face.track, frame.frame if frame.time is None else frame.time, *face.probs)
                         for frame in clip.frames for face in frame.faces], columns=["track", "t", *CLASS_NAMES])
    shown = sorted(rows["track"].value_counts().index[:6])
    fig = Figure(figsize=(7, 1.7 * len(shown) + 0.6), layout="constrained")
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    for ax, k in zip(axes, shown):
        track = rows[rows["track"] == k]
        for name, colour in zip(CLASS_NAMES, CLASS_COLOURS):
            ax.plot(track["t"], track[name], color=colour, lw=1.5, marker="." if len(track) < 40 else None, label=name)
        if uncertain_below is not None:
            ax.axhline(uncertain_below, color="0.4", lw=0.8, ls="--")
        ax.set(ylim=(0, 1), ylabel=f"face {k}\nprobability")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)" if clip.fps else "frame")
    axes[0].legend(ncol=7, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.02), frameon=False)
    fig.suptitle(f"{clip.path.name}: expression of each face over time", fontsize=10)
    return fig


def expand_inputs(paths, exclude: Path, frames: bool = False) -> list[Path]:
    """The image and video files named by ``paths``: files as given, folders searched recursively (skipping hidden
    files and the output folder ``exclude``), or with ``frames`` each folder kept as one clip."""
    return [f for p in map(Path, paths) for f in ([p] if frames or not p.is_dir() else sorted(
        f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(p).parts)
        and not f.resolve().is_relative_to(exclude.resolve())))]


def classify_photos(paths: list[Path], read: Reader, out_dir: Path, fps: float = SAMPLE_FPS,
                    frames: bool = False) -> list[PhotoResult | ClipResult]:
    """Every face in every file; writes OUT/<stem>.faces.<jpg|png> per photo, OUT/<stem>.tracks.png per clip with faces
    and OUT/faces.csv. An unreadable file is its result's error. Progress bars only on a terminal (a log gets noise)."""
    bar, results, taken = sys.stderr.isatty(), [], set()

    def target(path: Path, kind: str, ext: str) -> Path:  # <stem>.<kind><ext>, unique within the batch
        name, k = f"{path.stem}.{kind}{ext}", 2
        while name in taken:
            name, k = f"{path.stem}-{k}.{kind}{ext}", k + 1
        taken.add(name)
        return out_dir / name

    for path in tqdm(paths, desc="photos", unit="file", disable=not bar or len(paths) < 10, file=sys.stderr):
        if path.suffix.lower() in VIDEO_SUFFIXES or (frames and path.is_dir()):
            results.append(clip := classify_clip(path, read, fps, progress=bar))
            if any(frame.faces for frame in clip.frames):
                clip.plot, fig = target(path, "tracks", ".png"), plot_tracks(clip, read.uncertain_below)
                atomic_write(clip.plot, lambda tmp: fig.savefig(tmp, format="png", dpi=110, facecolor="white"))
            continue
        results.append(result := PhotoResult(path))
        try:
            image = open_photo(path)
        except PhotoError as err:
            result.error = str(err)
            continue
        result.faces, dropped = read(image)
        jpeg = path.suffix.lower() in (".jpg", ".jpeg")  # kept small
        result.rejected, drawn = len(dropped), annotate(image, result.faces, uncertain_below=read.uncertain_below)
        atomic_write(target(path, "faces", ".jpg" if jpeg else ".png"),
                     lambda tmp: drawn.save(tmp, "JPEG" if jpeg else "PNG", quality=92))
    table = faces_table(results)
    atomic_write(out_dir / "faces.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.4f",
                                                                 lineterminator="\r\n"))
    return results


def faces_table(results: list) -> pd.DataFrame:
    """faces.csv's rows (CSV_COLUMNS): one per face of each photo, and per face and sampled frame of each clip."""
    rows = [[str(r.path), r.frame, None if r.time is None else f"{r.time:.3f}", face.track or i, *face.box,
             *face.probs.astype(float), face.label, face.uncertain]
            for c in results for r in (c.frames if isinstance(c, ClipResult) else [c])
            for i, face in enumerate(r.faces, 1)]
    return pd.DataFrame(rows, columns=CSV_COLUMNS).astype({"frame": "Int64", "uncertain": "Int64"})


def summary(results: list) -> str:
    """The printed summary: a line per face ('?' after an uncertain label), per clip and its tracks, per image
    without a face and per unreadable file, then totals."""
    lines, photos = [], [r for r in results if isinstance(r, PhotoResult)]
    for r in results:
        if isinstance(r, ClipResult):
            tracks = pd.DataFrame([(f.track, f.label, bool(f.uncertain)) for frame in r.frames for f in frame.faces],
                                  columns=["track", "label", "uncertain"])
            lines.append(f"{r.path.name}: clip, {len(r.frames)} frames" + (
                f" sampled, every {r.every} of {r.fps:g} fps" if r.fps else "") + ("" if len(tracks) else "; no face"))
            for k, t in tracks.groupby("track"):
                share = t["label"].value_counts(normalize=True)
                lines.append(f"  face {k} in {len(t)} frame(s): mostly {share.index[0]} ({share.iloc[0]:.0%}), "
                             f"{t['uncertain'].sum()} uncertain")
        elif not r.faces:
            lines.append(f"{r.path.name}: " + ("unreadable (see below)" if r.error else "no face found"))
        lines += [f"{r.path.name}: face {i} at {','.join(map(str, f.box))}: {f.label}{'?' * bool(f.uncertain)} "
                  f"{f.prob:.2f}" for i, f in enumerate(getattr(r, "faces", []), 1)]
    faces = [f for r in photos for f in r.faces]
    labels = ", ".join(f"{n} {c}" for c, n in Counter(f.label for f in faces).most_common())
    rejected = sum(f.rejected for r in results for f in getattr(r, "frames", [r]))
    return "\n".join(lines + [
        f"{len(photos)} image(s): {len(faces)} face(s) ({labels}), "
        f"{sum(bool(f.uncertain) for f in faces)} uncertain (?); "
        f"{sum(not r.error and not r.faces for r in photos)} with no face; {len(results) - len(photos)} clip(s); "
        f"{rejected} box(es) dropped by the landmark check; {sum(bool(r.error) for r in results)} unreadable"])


def run_classify(inputs: list[str], run_dir: str | Path, out_dir: str | Path, device: str = "auto",
                 fps: float = SAMPLE_FPS, frames: bool = False) -> int:
    """The `classify` command; its exit status: 0 when every file was read (images without a face included), 1 when
    a file could not be read (the others are still done), 2 when there is no model."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not ((run_dir / "config.json").is_file() and (run_dir / WEIGHTS_FILE).is_file()):
        print(f"error: no trained model in {run_dir} (expected config.json and {WEIGHTS_FILE}). Pass --run with the "
              "model/ of a report (report/<dataset>/model/, made by `make report DATA=...`) or a run folder of "
              "`python -m fer_lib train` (runs/<dataset>-<hash>/).", file=sys.stderr)
        return 2
    if not fps > 0:
        print(f"error: --fps must be above 0, got {fps}", file=sys.stderr)
        return 2
    paths = expand_inputs(inputs, out_dir, frames)
    if not paths:
        print("error: no image or video files to classify", file=sys.stderr)
        return 1
    read = Reader.from_run(run_dir, resolve_device(device))
    print(f"The model in {run_dir} has no calibration.json: probabilities are the raw softmax, nothing is marked "
          "uncertain" if read.uncertain_below is None else
          f"Probabilities are calibrated on validation (temperature {read.temperature:.2f}); "
          f"'?' marks a face whose top probability is below {read.uncertain_below:.0%}.")
    results = classify_photos(paths, read, out_dir, fps, frames)
    print(summary(results))
    print(f"wrote faces.csv, {sum(isinstance(r, PhotoResult) and not r.error for r in results)} annotated image(s) "
          f"and {sum(bool(getattr(r, 'plot', None)) for r in results)} track plot(s) in {out_dir}/")
    for r in results:
        if r.error:
            print(f"error: {r.error}", file=sys.stderr)
    return int(any(r.error for r in results))


@dataclass
class YourFaces:
    """What Q7 shows: the picture, the faces found on it and, for validation faces composed on a canvas, how the
    found ones compare with their labels and with the model's reading of each face as its own 48x48 image."""
    picture: object  # PIL image, upright
    name: str  # the photo's file name, or "composed"
    faces: list  # of Face
    dropped: list[str]  # why the landmark check dropped each other detector box
    uncertain_below: float | None  # the run's threshold; None without calibration
    table: pd.DataFrame  # a row per face: box, label, (composed: read alone, true), probability, uncertain, the 7
    placed: np.ndarray | None = None  # composed: (N, 4) where each validation face was put
    picked: np.ndarray | None = None  # composed: (N,) which validation faces (indices)
    # composed: placed, found, extra (boxes on no placed face), right (found with their true label), as_alone (with
    # the model's label for the face alone)
    counts: dict | None = None


def your_faces(run_dir: str | Path, image: str | Path | None = None, val_images=None, val_labels=None,
               val_logits=None, device="cpu") -> YourFaces:
    """Q7's one call: the faces in ``image``, or else in 8 validation faces composed at 96-200 px (among those found
    alone: ``picked``), each beside its label and the run's reading of it alone (``val_logits``, on ``val_images``)."""
    read = Reader.from_run(run_dir, device)
    if image:
        picture, name = open_photo(image), Path(image).name
    else:  # drawn at random (seeded) among the faces the detector finds alone at their size, as on photos
        val_images, sides, picked = np.asarray(val_images), np.random.default_rng(0).integers(96, 201, 8), []
        order = np.random.default_rng(0).permutation(len(val_images))
        for i in order[:100]:  # about 3 in 4 FER2013 faces are found; synthetic ones may not be
            if len(picked) < 8 and read(compose_faces(val_images[[i]], sides[len(picked):][:1])[0])[0]:
                picked.append(i)
        picked = picked or list(order[:8])  # none found alone: the first drawn
        canvas, placed = compose_faces(val_images[picked], sides[:len(picked)], per_row=4)
        picture, name = Image.fromarray(canvas), "composed"
    faces, dropped = read(picture)
    table = pd.DataFrame([[k, *f.box, f.label, f.prob, f.uncertain, *map(float, f.probs)]
                          for k, f in enumerate(faces, 1)],
                         columns=["face", "x", "y", "w", "h", "label", "probability", "uncertain", *CLASS_NAMES])
    answer = YourFaces(picture, name, faces, dropped, read.uncertain_below, table)
    if not image:
        match = match_faces(faces, placed)
        on = {int(match[i]): i for i in np.flatnonzero(match >= 0)}  # found face -> the placed face it is on
        for column, labels in (("read alone", np.asarray(val_logits).argmax(1)), ("true", np.asarray(val_labels))):
            table.insert(6, column, [CLASS_NAMES[int(labels[picked[on[k]]])] if k in on else "\u2014"
                                     for k in range(len(faces))])
        answer.placed, answer.picked, answer.counts = placed, np.array(picked), {
            "placed": len(placed), "found": len(on), "extra": len(faces) - len(on),
            "right": int((table["label"] == table["true"]).sum()),
            "as_alone": int((table["label"] == table["read alone"]).sum())}
    return answer
