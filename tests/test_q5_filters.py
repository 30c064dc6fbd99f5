"""Q5 computations on crafted inputs whose answer is known: top faces (blank images and repeated photos left out),
class selectivity against label shuffles with the false-discovery rate controlled, attribute shifts beyond the
class, face attributes from hand-placed landmarks, and gradient ascent in a Fourier parameterisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import false_discovery_control

from fer_lib import CLASS_NAMES
from fer_lib.data.face_attributes import attributes_from_landmarks
from fer_lib.model.network import build_model
from fer_lib.questions.q5_filters import (
    Selectivity,
    attribute_shift,
    class_counts,
    class_selectivity,
    fourier_scale,
    gradient_ascent,
    image_from_spectrum,
    inactive_filters,
    informative_faces,
    pick_filters,
    random_view,
    response_map_side,
    shown_table,
    spectrum_from_image,
    stretch_contrast,
    top_faces,
    within_class_z,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_blank_and_near_uniform_faces_are_never_top_faces():
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (5, 48, 48)).astype(np.uint8)
    faces[1] = 0  # blank
    faces[3] = 120 + rng.integers(0, 3, (48, 48))  # near-uniform: std about 0.8 gray levels
    valid = informative_faces(faces)
    assert valid.tolist() == [True, False, True, False, True]
    responses = np.array([[1.0], [9.0], [2.0], [8.0], [3.0]])  # the blank faces respond most
    np.testing.assert_array_equal(top_faces(responses, np.array([0]), k=3, valid=valid), [[4, 2, 0]])
    np.testing.assert_array_equal(top_faces(responses, np.array([0]), k=5, valid=valid), [[4, 2, 0]])  # only 3 left


def test_top_faces_hold_one_face_per_duplicate_group():
    rng = np.random.default_rng(1)
    responses = rng.normal(size=(60, 4))
    groups = np.arange(60) // 3  # every photo three times
    groups[[0, 59]] = 100  # and two far-apart faces of one photo
    top = top_faces(responses, np.arange(4), k=12, groups=groups)
    assert top.shape == (4, 12)
    for f, row in enumerate(top):
        assert len(set(groups[row])) == 12  # no photo twice
        # and each is the strongest face of its photo, taken in order of response
        assert (np.diff(responses[row, f]) <= 0).all()
        for i in row:
            assert responses[i, f] == responses[groups == groups[i], f].max()


def test_top_faces_are_the_strongest_responders_and_inactive_filters_never_fire():
    responses = np.array([[0.1, 5.0, -1.0], [3.0, 0.2, 0.0], [2.0, 4.0, -0.5]])
    np.testing.assert_array_equal(top_faces(responses, np.array([0, 1]), k=2), [[1, 2], [0, 2]])
    assert inactive_filters(responses).tolist() == [2]


def test_class_counts():
    labels = np.array([5, 5, 5, 2, 3])
    counts = class_counts(labels, np.array([[0, 1, 2], [2, 3, 4]]))
    assert counts.shape == (2, len(CLASS_NAMES)) and counts.dtype.kind == "i"
    assert counts[0].tolist() == [0, 0, 0, 0, 0, 3, 0] and counts[1].tolist() == [0, 0, 1, 1, 0, 1, 0]


def selective_responses(rng, labels, n_filters=40, n_selective=14):
    """Responses where filter f < n_selective fires for class f % 7 and the others are noise."""
    responses = rng.normal(0, 1, (len(labels), n_filters))
    for f in range(n_selective):
        responses[labels == f % 7, f] += 4
    return responses


def test_label_shuffle_baseline_finds_the_selective_filters_and_none_when_labels_are_shuffled():
    rng = np.random.default_rng(0)
    labels = rng.choice(7, 700, p=[0.14, 0.02, 0.14, 0.25, 0.17, 0.11, 0.17])  # FER2013-like, Disgust rare
    responses = selective_responses(rng, labels)
    top = top_faces(responses, np.arange(40), k=16)
    sel = class_selectivity(labels, top, n_permutations=300)
    assert sel.selective[:14].all()
    assert sel.top_class[:14].tolist() == [f % 7 for f in range(14)]  # Disgust's filters included
    assert sel.selective[14:].sum() <= 1 and sel.beyond_chance
    # one count: the filters selective after the false-discovery control, the same in every view of it
    assert sel.n_selective == int(sel.selective.sum()) == int(sel.by_class().sum())
    assert sel.by_class()[1] >= 2  # filters 1 and 8 fire for Disgust
    mean, lo, hi = sel.chance()
    assert mean < 0.5 and lo <= mean <= hi  # with shuffled labels the control lets next to nothing through
    # the same faces with shuffled labels: nothing beyond chance, nothing survives the false-discovery rate
    shuffled = class_selectivity(rng.permutation(labels), top, n_permutations=300)
    assert not shuffled.beyond_chance and shuffled.n_selective == 0


def test_selective_means_passing_benjamini_hochberg():
    """``q`` is scipy's Benjamini-Hochberg adjustment of ``p`` and ``selective`` is q <= alpha, so a filter with p
    below alpha can still fail the control; known p-values give the q worked out by hand."""
    rng = np.random.default_rng(2)
    labels = rng.choice(7, 700)
    top = top_faces(selective_responses(rng, labels, n_selective=6), np.arange(40), k=16)
    sel = class_selectivity(labels, top, n_permutations=200)
    np.testing.assert_allclose(sel.q, false_discovery_control(sel.p))
    assert sel.selective.tolist() == (sel.q <= sel.alpha).tolist()
    # by hand: sorted p 0.005, 0.01, 0.03, 0.04, 0.2 -> p * 5 / rank 0.025, 0.025, 0.05, 0.05, 0.2
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
    known = Selectivity(np.zeros(5), np.array([0, 0, 1, 2, 3]), p, false_discovery_control(p), np.zeros((1, 5)),
                        np.zeros(1, int), k=16, alpha=0.03)
    np.testing.assert_allclose(known.q, [0.025, 0.05, 0.05, 0.025, 0.2])
    assert known.selective.tolist() == [True, False, False, True, False]  # p 0.03 passes alone, not after control
    assert known.n_selective == 2 and known.by_class().tolist() == [1, 0, 1, 0, 0, 0, 0]


def test_class_selectivity_ignores_blank_faces_in_the_shuffles():
    labels = np.repeat(np.arange(7), 20)
    valid = np.ones(140, bool)
    valid[:20] = False  # class 0 faces are all blank: never top faces, never shuffled in
    responses = np.zeros((140, 1))
    responses[20:40, 0] = 1  # filter 0 fires on class 1
    top = top_faces(responses, np.array([0]), k=10, valid=valid)
    sel = class_selectivity(labels, top, valid, n_permutations=200)
    assert sel.top_class[0] == 1 and sel.selective[0]


def test_within_class_z_and_attribute_shift_beyond_the_class():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 3], 300)
    values = rng.normal(size=(600, 2))
    values[labels == 3, 0] += 5  # class 3 has wide-open mouths: not a finding about any filter
    z = within_class_z(values, labels)
    for c in (0, 3):
        np.testing.assert_allclose(z[labels == c].mean(0), 0, atol=1e-9)
        np.testing.assert_allclose(z[labels == c].std(0), 1, atol=1e-9)
    responses = rng.normal(size=(600, 3))
    responses[:, 0] += 3 * values[:, 0]  # filter 0 follows attribute 0 (and so prefers class 3 faces)
    responses[:, 1] = np.where(labels == 3, 10, 0) + rng.normal(size=600)  # filter 1 follows the class only
    top = top_faces(responses, np.arange(3), k=16)
    shift = attribute_shift(values, labels, top, names=("mouth_open", "eye_open"), n_permutations=300)
    assert shift.shift[0, 0] > 1 and shift.p[0, 0] <= 0.01  # beyond its class: higher
    assert shift.p[1, 0] > 0.05  # class 3's open mouths alone are not a shift
    up, down = shift.counts()
    assert up[0] >= 1 and down[0] == 0
    table = shift.table()
    assert table.columns.tolist() == ["attribute", "top faces", "filters", "by chance (mean)", "by chance (95% up to)",
                                      "beyond chance"]
    first = table.iloc[0]
    assert (first["attribute"], first["top faces"], first["filters"]) == ("mouth opening", "higher", up[0])
    assert table["beyond chance"].dtype == bool


def test_attributes_from_hand_placed_landmarks():
    pts = np.zeros((2, 68, 2))
    pts[:, 0], pts[:, 16] = (4, 20), (44, 20)  # jaw ends: face 40 px wide
    pts[:, 30] = (24, 26)  # nose tip midway: frontal
    pts[1, 30] = (14, 26)  # face 1: nose near the jaw's point 0 end
    for eye in (slice(36, 42), slice(42, 48)):  # corners 10 px apart, lids 3 px apart: aspect ratio 0.3
        pts[:, eye] = [(0, 0), (3, -1.5), (7, -1.5), (10, 0), (7, 1.5), (3, 1.5)]
    pts[:, 60:68] = [(18, 34), (21, 34), (24, 34), (27, 34), (30, 34), (27, 34), (24, 34), (21, 34)]
    pts[1, 65:68, 1] = 38  # face 1: lower inner lip 4 px below the upper one
    faces = np.stack([np.full((48, 48), 51), np.tile([0, 255], (48, 24))]).astype(np.uint8)
    a = attributes_from_landmarks(pts, faces)
    np.testing.assert_allclose(a["mouth_open"], [0, 4 / 40], atol=1e-6)
    np.testing.assert_allclose(a["eye_open"], [0.3, 0.3], atol=1e-6)
    assert a["yaw"][0] == pytest.approx(0, abs=1e-6) and a["yaw"][1] < -0.3
    assert a["head_turn"][1] == pytest.approx(-a["yaw"][1])
    np.testing.assert_allclose(a["brightness"], [0.2, 0.5], atol=1e-6)
    np.testing.assert_allclose(a["contrast"], [0, 0.5], atol=1e-6)


def test_pick_filters_takes_the_clearest_per_class_then_random_active_ones():
    rng = np.random.default_rng(0)
    labels = rng.choice(7, 700)
    responses = selective_responses(rng, labels)
    responses[:, 39] = -1  # never fires
    top = top_faces(responses, np.arange(40), k=16)
    sel = class_selectivity(labels, top, n_permutations=100)
    chosen = pick_filters(sel, responses, 12)
    assert len(chosen) == len(set(chosen.tolist())) == 12
    assert sorted(sel.top_class[chosen[:7]].tolist()) == list(range(7))  # one per class first
    assert 39 not in chosen


def test_fourier_parameterisation_reproduces_an_image_and_has_a_natural_spectrum():
    scale = fourier_scale(32)
    image = torch.rand(2, 1, 32, 32)
    np.testing.assert_allclose(image_from_spectrum(spectrum_from_image(image, scale), scale), image, atol=1e-5)
    # equal-variance parameters give an amplitude spectrum falling as 1 / frequency, like a natural image's
    g = torch.Generator().manual_seed(0)
    noise = image_from_spectrum(torch.randn(400, 1, 32, 17, 2, generator=g), scale)
    amplitude = torch.fft.rfft2(noise, norm="ortho").abs().mean((0, 1))  # (32, 17)
    freq = 1 / scale
    keep = (freq > 2 / 32) & (freq < 0.4)
    slope = np.polyfit(np.log(freq[keep].numpy()), np.log(amplitude[keep].numpy()), 1)[0]
    assert slope == pytest.approx(-1, abs=0.1)


def test_random_view_is_the_identity_without_motion_and_fills_with_gray():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(random_view(x, g, 0, 0, 0), x, atol=1e-5, rtol=0)
    moved = random_view(torch.zeros(3, 1, 16, 16), g, shift=8, scale=0.3, degrees=30)
    assert moved.max() <= 0.5 + 1e-6  # black image, gray moved in from outside


def test_stretch_contrast_maps_percentiles_to_black_and_white():
    ramp = np.linspace(0.4, 0.6, 100).reshape(1, 10, 10)
    out = stretch_contrast(ramp, 0, 100)
    assert out.min() == pytest.approx(0) and out.max() == pytest.approx(1)
    assert stretch_contrast(np.full((1, 4, 4), 0.5)).max() == 0  # flat image: no division by zero


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_ascent_raises_each_target_filter_and_leaves_model_and_rng_alone(device):
    torch.manual_seed(0)
    model = build_model("random")[0].to(device).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    filters = [3, 100, 400]
    images, before, after = gradient_ascent(model, filters, steps=20)
    assert images.shape == (3, 48, 48) and images.min() >= 0 and images.max() <= 1
    assert (after > before).all(), list(zip(before, after))
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    again, _, _ = gradient_ascent(model, filters, steps=20)
    np.testing.assert_allclose(images, again, atol=1e-5)  # seeded


@pytest.mark.parametrize("size,side", [(48, 2), (72, 3)])
def test_response_map_side(size, side):
    assert response_map_side(build_model("random")[0], size) == side


def test_shown_table_holds_the_computed_numbers():
    rng = np.random.default_rng(0)
    labels = rng.choice(7, 700)
    responses = selective_responses(rng, labels)
    top = top_faces(responses, np.arange(40), k=16)
    sel = class_selectivity(labels, top, n_permutations=100)
    values = rng.normal(size=(700, 5))
    shift = attribute_shift(values, labels, top, n_permutations=100)
    chosen = np.array([0, 20])
    table = shown_table(chosen, labels, top, sel, shift, np.array([2.0, 1.0]), np.array([1.0, 1.5]))
    assert table["filter"].tolist() == [0, 20]
    assert table["class"][0] == CLASS_NAMES[0] and table["of 16 top faces"][0] == (labels[top[0]] == 0).sum()
    np.testing.assert_allclose(table["q"], sel.q[chosen])
    assert table["selective"].tolist() == sel.selective[chosen].tolist() and table["selective"][0]
    np.testing.assert_allclose(table["mouth opening"], shift.shift[chosen, 0])
    assert table["best face"].tolist() == [1.0, 1.5] and table["ascent image"].tolist() == [2.0, 1.0]
