"""Classifying faces in photos: detection on composed FER2013 pictures, FER2013-like crops, flip TTA, EXIF,
huge, faceless and corrupt files, and the `classify` command's outputs and exit status."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fer_lib import CLASS_NAMES
from fer_lib.photos import (
    CROP_SCALE,
    CSV_COLUMNS,
    PhotoError,
    classify_faces,
    classify_photo,
    compose_faces,
    crop_box,
    crop_face,
    detect_faces,
    match_faces,
    open_photo,
    run_classify,
    to_gray,
)

FER_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"  # CI has it beside the clone
# FER2013 test faces the composed pictures use (fixed, so every run sees the same pictures)
FACE_IDS = list(range(12))


@pytest.fixture(scope="session")
def fer_faces() -> np.ndarray:
    """The first 16 faces of FER2013's test file (id,feature rows; read directly: parsing all 7,178 takes seconds)."""
    path = FER_DIR / "test.csv.gz"
    if not path.exists():
        pytest.skip(f"FER2013 test faces not found at {path}: the detection tests need real faces "
                    "(drawn synthetic faces are not detected by a photo face detector)")
    with gzip.open(path, "rt") as f:
        assert next(f).strip() == "id,feature"
        rows = [next(f) for _ in range(16)]
    return np.stack([np.array(r.split(",")[1].split(), np.uint8).reshape(48, 48) for r in rows])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder as `train` ships it (config.json + float16 weights.pt) holding a seeded random ResNet18."""
    from fer_lib.model import build_model
    from fer_lib.runs import WEIGHTS_FILE, TrainConfig

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model, _ = build_model("random")
    (run / "config.json").write_text(json.dumps({"config": asdict(TrainConfig(weights="random"))}))
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, run / WEIGHTS_FILE)
    return run


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
    from fer_lib.runs import load_trained

    return load_trained(tiny_run)


@pytest.fixture(scope="session")
def composed(fer_faces):
    """12 FER2013 test faces at sides from 96 to 200 px on a plain canvas, and where each was placed."""
    sides = np.linspace(96, 200, len(FACE_IDS)).round().astype(int)
    canvas, placed = compose_faces(fer_faces[FACE_IDS], sides=sides, per_row=4)
    return canvas, placed, fer_faces[FACE_IDS]


def _face_picture(face: np.ndarray, side: int = 160) -> np.ndarray:
    return compose_faces(face[None], sides=[side])[0]


# ---------------------------------------------------------------------------------------------
# the pieces


def test_composed_faces_at_several_sizes_are_found_framed_and_classified(composed, tiny_model):
    canvas, placed, originals = composed
    model, config = tiny_model
    faces = classify_photo(canvas, model, config.input_size)
    match = match_faces(faces, placed)
    found = np.flatnonzero(match >= 0)
    # the cascade finds about 3 in 4 FER2013 faces; at least half of these 12, small and large among them
    assert len(found) >= len(placed) // 2, f"found {len(found)} of {len(placed)}"
    assert placed[found, 2].min() < 130 and placed[found, 2].max() > 170
    assert len(faces) <= len(found) + 1, "at most one box on the plain canvas"
    assert (np.diff(match[found]) > 0).all(), "faces are numbered in reading order, like the placed ones"
    for i in found:
        face = faces[match[i]]
        x, y, w, h = face.box
        px, py, side, _ = placed[i]
        assert 0.8 * side <= w <= 1.1 * side and w == h
        assert abs(x + w / 2 - (px + side / 2)) < 0.1 * side and abs(y + h / 2 - (py + side / 2)) < 0.1 * side
        # the FER2013-like crop is registered with the face it came from: closer to it than to any other face
        diffs = np.abs(face.crop.astype(float)[None] - originals.astype(float)).mean(axis=(1, 2))
        assert diffs.argmin() == i, f"crop of face {i} resembles face {diffs.argmin()} more"
        assert face.crop.shape == (48, 48) and face.crop.dtype == np.uint8
        assert face.probs.shape == (7,) and abs(face.probs.sum() - 1) < 1e-5 and face.probs.min() >= 0
        assert face.label == CLASS_NAMES[face.probs.argmax()] and face.prob == pytest.approx(face.probs.max())


def test_predictions_use_flip_test_time_augmentation(composed, tiny_model):
    """With flip TTA a face and its mirror image get the same probabilities (their logits are averaged)."""
    model, config = tiny_model
    faces = composed[2][:4]
    probs = classify_faces(model, faces, config.input_size)
    mirrored = classify_faces(model, np.ascontiguousarray(faces[:, :, ::-1]), config.input_size)
    np.testing.assert_allclose(probs, mirrored, atol=1e-5)
    assert classify_faces(model, np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)


def test_photos_without_faces_give_no_boxes(tiny_model):
    model, config = tiny_model
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (240, 320), dtype=np.uint8)
    assert classify_photo(np.full((240, 320, 3), 200, np.uint8), model, config.input_size) == []
    assert len(detect_faces(noise)) == 0
    assert len(detect_faces(np.zeros((20, 20), np.uint8))) == 0, "smaller than the smallest face"


def test_huge_photos_are_downscaled_for_detection_and_boxes_map_back(fer_faces):
    canvas, placed = compose_faces(fer_faces[FACE_IDS[:3]], sides=[150, 150, 150])
    big = np.asarray(Image.fromarray(canvas).resize((canvas.shape[1] * 4, canvas.shape[0] * 4), Image.BICUBIC))
    assert max(big.shape) > 1600
    small_boxes = detect_faces(canvas)
    big_boxes = detect_faces(big, max_side=1600)
    assert len(small_boxes) and len(big_boxes) == len(small_boxes)
    # detection ran on a ~1600 px copy: the boxes come back in the full-size photo's pixels
    np.testing.assert_allclose(big_boxes, small_boxes * 4, atol=0.08 * 4 * small_boxes[:, 2:].max())
    assert (match_faces(big_boxes, placed * 4) >= 0).sum() == (match_faces(small_boxes, placed) >= 0).sum()


def test_crop_grows_the_box_to_fer2013_framing_and_repeats_edges():
    x0, y0, side = crop_box((50, 60, 100, 100))
    assert side == round(100 * CROP_SCALE) and (x0 + side / 2, y0 + side / 2) == pytest.approx((100, 110), abs=1)
    ramp = np.tile(np.arange(200, dtype=np.uint8), (200, 1))  # brightness = column
    x0, _, side = crop_box((50, 50, 100, 100))
    inside = crop_face(ramp, (50, 50, 100, 100))  # spans the grown frame, columns x0 .. x0 + side - 1
    assert inside.shape == (48, 48) and x0 < 50 and x0 + side > 150
    assert abs(inside[:, 0].mean() - x0) <= 2 and abs(inside[:, -1].mean() - (x0 + side - 1)) <= 2
    corner = crop_face(ramp, (-10, -10, 60, 60))  # a box over the edge: repeated edge pixels, no error
    assert corner.shape == (48, 48) and corner[:, 0].max() == 0


def test_gray_conversion_is_pil_luma():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    gray = to_gray(rgb)
    np.testing.assert_array_equal(gray, np.asarray(Image.fromarray(rgb).convert("L")))
    luma = rgb.astype(float) @ [0.299, 0.587, 0.114]
    assert np.abs(gray - luma).max() <= 1
    rgba = Image.fromarray(np.dstack([rgb, np.zeros((30, 40), np.uint8)]), "RGBA")  # fully transparent: white
    assert (to_gray(rgba) == 255).all()
    deep = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # 16-bit gray scales back to 8 bits
    np.testing.assert_array_equal(to_gray(deep), rgb[..., 0])


# ---------------------------------------------------------------------------------------------
# files


def test_exif_rotated_photo_is_turned_upright_before_detection(fer_faces, tmp_path):
    upright = _face_picture(fer_faces[FACE_IDS[0]])
    assert len(detect_faces(upright)) == 1
    # a camera held sideways stores the pixels turned and says so in EXIF (6: rotate 90 degrees clockwise to view)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    assert len(detect_faces(np.asarray(stored))) == 0, "the frontal-face detector misses a face lying sideways"
    photo = open_photo(tmp_path / "sideways.jpg")
    assert photo.size == (upright.shape[1], upright.shape[0])
    assert len(detect_faces(to_gray(photo))) == 1


def test_unreadable_files_are_named(tmp_path):
    good = tmp_path / "ok.png"
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "notes.jpg").write_text("not a picture")
    for name in ("truncated.png", "notes.jpg", "missing.png"):
        with pytest.raises(PhotoError, match=name):
            open_photo(tmp_path / name)
    assert open_photo(good).mode == "L"


def test_classify_command_writes_csv_and_annotated_copies(fer_faces, tiny_run, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    canvas, placed = compose_faces(fer_faces[FACE_IDS[:6]], seed=3)
    tinted = np.dstack([canvas, (canvas * 0.8).astype(np.uint8), canvas])  # colour JPEG
    Image.fromarray(tinted).save(photos / "group.jpg", quality=92)
    Image.fromarray(np.full((200, 300), 90, np.uint8)).save(photos / "wall.png")
    (photos / "broken.jpg").write_bytes((photos / "group.jpg").read_bytes()[:1500])
    out = photos / "out"  # inside the input folder: its files must not be classified on the next run

    code = run_classify([str(photos)], tiny_run, out, device="cpu")
    printed = capsys.readouterr()
    assert code == 1, "a file could not be read"
    assert "broken.jpg" in printed.err and "no face found" in printed.out
    table = pd.read_csv(out / "faces.csv")
    assert list(table.columns) == CSV_COLUMNS
    assert set(table["file"].map(lambda f: Path(f).name)) == {"group.jpg"}
    assert (match_faces(table[["x", "y", "w", "h"]].to_numpy(), placed) >= 0).sum() >= 3
    np.testing.assert_allclose(table[list(CLASS_NAMES)].sum(axis=1), 1, atol=1e-3)
    assert (table["label"] == table[list(CLASS_NAMES)].idxmax(axis=1)).all()
    assert (table["face"] == np.arange(1, len(table) + 1)).all()
    drawn = Image.open(out / "group.faces.jpg")
    assert drawn.size == (canvas.shape[1], canvas.shape[0]) and drawn.mode == "RGB"
    assert (out / "wall.faces.png").exists() and not list(out.glob("broken*"))
    assert not list(out.glob(".*.tmp")), "nothing half-written"

    (photos / "broken.jpg").unlink()
    assert run_classify([str(photos)], tiny_run, out, device="cpu") == 0, "images without a face are no failure"
    assert len(pd.read_csv(out / "faces.csv")) == len(table), "the output folder was not read back as input"


def test_classify_without_a_model_says_how_to_get_one(tmp_path):
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(tmp_path / "a.png")
    result = subprocess.run([sys.executable, "-m", "fer_lib", "classify", str(tmp_path / "a.png"),
                             "--run", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "no-model" in result.stderr and "make report DATA=" in result.stderr and "Traceback" not in result.stderr


def test_classify_help_explains_the_command(capsys):
    from fer_lib.__main__ import main

    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    help_text = capsys.readouterr().out
    assert "--run" in help_text and "Haar cascade" in help_text and "Exit status" in help_text
