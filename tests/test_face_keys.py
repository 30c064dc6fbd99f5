"""Face identity keys: a copy of the faces re-encoded as JPEG or PNG, reordered, with a face added and one missing,
is matched to the faces a model was trained and validated on."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_lib.data.face_keys import (
    NEAR_BITS,
    NEW,
    TRAIN,
    VAL,
    FaceKeys,
    exact_keys,
    hamming,
    match_faces,
    nearest_distance,
    perceptual_keys,
)
from fer_lib.data.synthetic import make_faces

REAL_FACES = Path(__file__).parent / "data" / "fer2013_test_faces"


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """16 real FER2013 faces and 184 synthetic ones: 200 distinct faces."""
    real = np.stack([np.asarray(Image.open(p).convert("L")) for p in sorted(REAL_FACES.glob("*.png"))])
    synthetic = make_faces(184, seed=0)[0]
    return np.concatenate([real, synthetic]).astype(np.uint8)


def reencoded(images: np.ndarray, quality: int | None) -> np.ndarray:
    """Each face written as JPEG at ``quality`` (PNG when None) and read back, as a user's image copy is."""
    out = []
    for face in images:
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="PNG" if quality is None else "JPEG",
                                   **({} if quality is None else {"quality": quality}))
        out.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L")))
    return np.stack(out)


def test_exact_keys_follow_the_pixels(faces):
    keys = exact_keys(faces)
    assert len(set(keys.tolist())) == len(faces)
    changed = faces.copy()
    changed[3, 10, 10] ^= 1
    assert (exact_keys(changed) != keys).sum() == 1


def test_perceptual_keys_survive_jpeg_and_tell_faces_apart(faces):
    keys = FaceKeys.of(faces[:150], faces[150:])
    original = perceptual_keys(faces, keys.thresholds)[0]
    for quality in (75, 85, 95):
        copy, steady = perceptual_keys(reencoded(faces, quality), keys.thresholds)
        assert hamming(copy, original, steady).max() <= NEAR_BITS
    d = hamming(original[:, None], original[None, :])  # distinct faces: none within the threshold of another
    np.fill_diagonal(d, 64)
    assert d.min() > NEAR_BITS
    every_bit = np.full(5, 2**64 - 1, dtype=np.uint64)
    assert nearest_distance(original[:5], original, every_bit).tolist() == [0] * 5
    assert (nearest_distance(original[:5], original[5:], every_bit) > NEAR_BITS).all()


@pytest.mark.parametrize("quality", [75, 95, None])
def test_a_reordered_reencoded_copy_with_a_face_added_and_one_missing_matches(faces, quality):
    train, val = faces[:150], faces[150:190]
    keys = FaceKeys.of(train, val)
    rng = np.random.default_rng(1)
    unseen = faces[190:191]  # a face the model never saw
    copy = np.concatenate([np.delete(train, 7, axis=0), val, unseen])  # training face 7 missing
    order = rng.permutation(len(copy))
    match = match_faces(reencoded(copy, quality)[order], keys)
    side = np.empty_like(match.side)
    side[order] = match.side
    assert (side[:149] == TRAIN).all() and (side[149:189] == VAL).all() and side[189] == NEW
    counts = match.counts
    assert counts["new"] == 1
    assert counts["exact"] == (189 if quality is None else 0)  # PNG keeps the pixels, JPEG changes them
    assert counts["exact"] + counts["near"] == 189
    assert match.found_share == pytest.approx(189 / 190)


def test_keys_round_trip_through_the_model_folder(faces, tmp_path):
    keys = FaceKeys.of(faces[:150], faces[150:])
    keys.save(tmp_path)
    loaded = FaceKeys.load(tmp_path)
    for name in keys.__dataclass_fields__:
        assert np.array_equal(getattr(loaded, name), getattr(keys, name))
    assert (tmp_path / "faces.npz").stat().st_size < 16 * 200 + 2000  # keys only: 12 bytes a face and a header
