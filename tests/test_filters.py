"""Q5 computations on crafted inputs whose answer is known: blank faces, top faces, class mix, the region a
filter's response comes from, the gradient-ascent check, and the findings' sentences."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fer_lib.explain import face_regions
from fer_lib.filters import (
    class_mix,
    filter_findings,
    filter_maps,
    filter_notes,
    filter_responses,
    gradient_ascent,
    informative_faces,
    mix_caption,
    overview,
    pick_filters,
    top_faces,
)
from fer_lib.model import build_model

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
    assert "2 of those faces are blank or near-uniform" in overview(responses, valid)


def test_top_faces_are_the_strongest_responders():
    responses = np.array([[0.1, 5.0], [3.0, 0.2], [2.0, 4.0]])
    np.testing.assert_array_equal(top_faces(responses, np.array([0, 1]), k=2), [[1, 2], [0, 2]])


def test_class_mix_and_caption():
    labels = np.array([5, 5, 5, 2, 3])
    mix = class_mix(labels, np.array([[0, 1, 2], [2, 3, 4]]))
    np.testing.assert_allclose(mix[0, 5], 1.0)
    np.testing.assert_allclose(mix[1, [2, 3, 5]], [1 / 3, 1 / 3, 1 / 3])
    assert mix_caption(np.array([0, 0, 1, 0, 0, 8, 0]) / 9) == "Surprise 8, Fear 1"


def test_pick_filters_spreads_over_classes_and_skips_inactive():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), 10)
    responses = rng.normal(0, 0.1, (70, 20))
    for c in range(7):
        responses[labels == c, c] += 3  # filter c fires for class c
    responses[:, 19] = -1  # never fires
    assert sorted(pick_filters(responses, labels, 7).tolist()) == list(range(7))
    chosen = pick_filters(responses, labels, 32)  # fewer than asked: only 19 are active
    assert len(chosen) == 19 and 19 not in chosen


class Crafted(nn.Module):
    """feat = the red input channel (1x1 conv); out = [feat, -feat]; logits = mean of out. Filter 0's response
    therefore grows with every bright pixel alike, so its Grad-CAM on ``feat`` is the (positive) input itself."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Conv2d(3, 1, 1, bias=False)
        self.out = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.feat.weight.copy_(torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1))
            self.out.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, x):
        return self.out(self.feat(x)).mean((2, 3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [48, 72])
def test_filter_map_of_a_face_bright_only_in_the_mouth_box(device, size):
    mouth48 = face_regions(48)["mouth"]
    faces = np.where(mouth48, 255, 0).astype(np.uint8)[None, None]  # (1 filter, 1 face, 48, 48)
    maps = filter_maps(Crafted().to(device), faces, [0], input_size=size, layer="feat", response_layer="out")
    assert maps.shape == (1, 1, size, size) and maps.min() >= 0 and maps.max() == pytest.approx(1)
    mass = maps[0, 0]
    inside = (mass * face_regions(size)["mouth"]).sum() / mass.sum()
    assert inside > 0.9
    findings = filter_findings([0], np.eye(7)[[3]], maps, np.array([2.0]), np.array([1.0]), k=1)
    assert findings.regions == ["mouth"]


def test_filter_findings_flag_a_weak_ascent_image_and_count_selective_filters():
    regions = face_regions(48)
    maps = np.stack([np.stack([regions["mouth"]] * 3), np.stack([regions["eyes_brows"]] * 3),
                     np.stack([regions["mouth"]] * 3)]).astype(np.float32)  # (3 filters, 3 faces, 48, 48)
    mix = np.array([[0, 0, 0, 1, 0, 0, 0], [1 / 3, 0, 1 / 3, 0, 0, 1 / 3, 0], [0, 0, 0, 0, 0, 2 / 3, 1 / 3]])
    findings = filter_findings([10, 20, 30], mix, maps, ascent_response=np.array([5.0, 0.5, 3.0]),
                               best_face_response=np.array([4.0, 1.0, 3.5]), k=3)
    assert findings.regions == ["mouth", "eyes_brows", "mouth"]
    assert findings.weak_ascent.tolist() == [False, True, True]
    assert findings.selective.tolist() == [True, False, True]
    assert findings.short_captions()[0] == "Happy 3/3, mouth"
    assert findings.map_captions()[1].startswith("20: eyes/brows ")
    answer = findings.answer()
    assert answer.startswith("2 of the 3 filters shown respond to one expression (at least 2 of their 3 top faces "
                             "share a class: Happy 1, Surprise 1). Their responses come mostly from the mouth (2 of "
                             "the 3 filters; next the eyes/brows, 1).")
    assert "excites 2 of the 3 filters less than their best real face" in answer
    assert "(filters 20, 30)" in " ".join(findings.sentences())
    table = findings.table()
    assert table["ascent below best face"].tolist() == ["", "yes", "yes"]
    findings.styled_table().to_html()


@pytest.mark.parametrize("size,response,detail", [(48, "2x2", "6x6"), (72, "3x3", "9x9")])
def test_filter_notes_measure_the_maps(size, response, detail):
    notes = filter_notes(build_model("random")[0], size, 5)
    assert (notes["response_map"], notes["detail_map"], notes["n_filters"], notes["n_shown"]) == (response, detail,
                                                                                                  "512", "5")


def test_gradient_ascent_raises_each_target_filter(trained_synthetic):
    model, val, _ = trained_synthetic
    responses = filter_responses(model, val.images)
    chosen = np.argsort(-responses.max(0))[:8]
    images, before, after = gradient_ascent(model, chosen, steps=40)
    assert images.shape == (8, 48, 48) and images.min() >= 0 and images.max() <= 1
    assert (after > before).all(), list(zip(before, after))
