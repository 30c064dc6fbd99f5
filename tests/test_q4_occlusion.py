"""Q4 occlusion: on a crafted model that reads only the mouth, covering the mouth costs the most beyond its control
and the control costs little; controls keep shape and area away from the features; faces without landmarks are left
out and counted; intervals bracket their means; agreement with the attribution maps is counted per class."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fer_lib import CLASS_NAMES
from fer_lib.data.regions import FEATURES, landmark_regions, moved_off
from fer_lib.model.inference import predict_logits
from fer_lib.questions.q4_occlusion import ALL, OCCLUDED, Occlusion, attribution_agreement, controls, fill, occlusion
from tests.test_q4_saliency import frontal_points

HAPPY, SAD = CLASS_NAMES.index("Happy"), CLASS_NAMES.index("Sad")
MOUTH_BOX = (slice(35, 39), slice(19, 28))  # inside the mouth of frontal_points() at 48 px


class MouthReader(nn.Module):
    """Logits from the detail (standard deviation) of the pixels in a box on the mouth: P(Happy) is high when the
    mouth keeps its texture, low when it is blurred; nothing else in the image matters."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x):  # (B, 3, 48, 48) normalised
        detail = x[:, 0, MOUTH_BOX[0], MOUTH_BOX[1]].flatten(1).std(1) * 0.229  # back to the [0, 1] grey scale
        logits = torch.zeros(len(x), len(CLASS_NAMES))
        logits[:, HAPPY] = self.scale * detail - 2
        return logits


def _faces(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (n, 48, 48)).astype(np.uint8)  # texture everywhere: every region has detail
    points = np.stack([frontal_points(cx=23.5 + rng.uniform(-0.5, 0.5), cy=24 + rng.uniform(-0.5, 0.5))
                       for _ in range(n)])
    return faces, landmark_regions(points)


def test_moved_off_keeps_shape_and_area_and_leaves_what_to_avoid():
    _, regions = _faces(4)
    features = np.any([regions[r] for r in FEATURES], axis=0)
    for r in ("brows", "eyes", "mouth"):
        moved = moved_off(regions[r], features | regions[r])
        assert not (moved & features).any()  # a feature-sized patch fits off the features
        for m, before in zip(moved, regions[r]):  # the same shape, only moved
            assert any(np.array_equal(np.roll(before, (dy, dx), axis=(0, 1)), m) for dy in range(48) for dx in range(48)
                       if dy or dx)


def test_only_the_region_that_carries_the_signal_costs_beyond_its_control():
    faces, regions = _faces(12)
    labels = np.full(12, HAPPY)
    found = np.ones(12, bool)
    model = MouthReader()
    occ = occlusion(model, faces, labels, regions, found, input_size=48, n_boot=300)
    row = occ.table.loc[CLASS_NAMES[HAPPY]]
    assert row["effect"].idxmax() == "mouth"
    assert row.loc["mouth", "drop"] > 0.5 and abs(row.loc["mouth", "control"]) < 0.02
    others = row.drop(index=["mouth", "rest_of_face"])  # the rest's control must land partly on features
    assert (others["effect"].abs() < 0.02).all()
    top = occ.top()
    assert top.loc[CLASS_NAMES[HAPPY], "region"] == "mouth" and top.loc[CLASS_NAMES[HAPPY], "clear"]
    assert "mouth" not in top.loc[CLASS_NAMES[HAPPY], "tied"]


def test_each_drop_is_the_probability_lost_when_the_region_or_its_control_takes_the_blurred_face():
    faces, regions = _faces(6, seed=2)
    model = MouthReader()
    occ = occlusion(model, faces, np.full(6, HAPPY), regions, np.ones(6, bool), input_size=48, n_boot=100)
    grey = faces.astype(np.float32) / 255
    moved = controls(regions)

    def p_happy(images):
        return torch.softmax(predict_logits(model, torch.from_numpy(images), 48), 1)[:, HAPPY].numpy()

    np.testing.assert_allclose(occ.intact, p_happy(grey), atol=1e-6)
    for j, r in enumerate(OCCLUDED):
        for masks, drop in ((regions[r], occ.drop[:, j]), (moved[r], occ.control_drop[:, j])):
            np.testing.assert_allclose(drop, occ.intact - p_happy(np.where(masks, fill(grey), grey)), atol=1e-6)


def test_faces_without_landmarks_are_left_out_and_counted_and_intervals_bracket_the_means():
    faces, regions = _faces(16, seed=1)
    labels = np.r_[np.full(8, HAPPY), np.full(8, SAD)]
    found = np.ones(16, bool)
    found[[0, 9, 10]] = False
    model = MouthReader()
    occ = occlusion(model, faces, labels, regions, found, input_size=48, n_boot=300)
    assert list(occ.index) == [i for i in range(16) if found[i]]
    assert occ.table.loc[(ALL, "mouth"), "faces"] == 13
    assert occ.table.loc[(CLASS_NAMES[HAPPY], "mouth"), "faces"] == 7
    assert occ.table.loc[(CLASS_NAMES[SAD], "mouth"), "faces"] == 6
    t = occ.table
    for key, low, high in (("drop", "drop low", "drop high"), ("control", "control low", "control high"),
                           ("effect", "low", "high")):
        assert (t[low] <= t[key] + 1e-9).all() and (t[key] <= t[high] + 1e-9).all()
    assert (t["sign"] == np.where(t["low"] > 0, 1, np.where(t["high"] < 0, -1, 0))).all()
    # Sad faces: the model never says Sad, so nothing changes P(Sad) much and no region is claimed for Sad
    assert not occ.top().loc[CLASS_NAMES[SAD], "clear"] or occ.top().loc[CLASS_NAMES[SAD], "effect"] < 0.02


def test_controls_avoid_the_region_itself():
    _, regions = _faces(3)
    moved = controls(regions)
    assert set(moved) == set(OCCLUDED)
    for r in OCCLUDED:
        assert (moved[r].sum((1, 2)) == regions[r].sum((1, 2))).all()
    assert not (moved["mouth"] & regions["mouth"]).any()


@pytest.mark.parametrize("mass_on, expected", [("mouth", 2), ("brows", 0)])
def test_attribution_agreement_counts_methods_naming_the_costliest_region(mass_on, expected):
    top = pd.DataFrame({"region": ["mouth", "eyes"], "tied": [["nose"], []], "clear": [True, False]},
                       index=pd.Index(["Happy", "Sad"], name="class"))  # Sad: no clear region, no row
    index = pd.MultiIndex.from_product([["Happy"], ["saliency", "Grad-CAM", "SmoothGrad"], [*OCCLUDED,
                                                                                            "outside_face"]],
                                       names=["class", "method", "region"])
    by_class = pd.DataFrame({"difference": 0.0}, index=index).sort_index()
    by_class.loc[("Happy", "saliency", mass_on), "difference"] = 0.1
    by_class.loc[("Happy", "Grad-CAM", mass_on), "difference"] = 0.1
    by_class.loc[("Happy", "Grad-CAM", "outside_face"), "difference"] = 0.5  # not an occluded region: ignored
    by_class.loc[("Happy", "SmoothGrad"), "difference"] = np.nan  # all-zero maps: no region named, not counted
    area = dict.fromkeys(OCCLUDED, 0.05) | {"rest_of_face": 0.4}
    by_class.loc[("Happy", "saliency", "rest_of_face"), "difference"] = 0.2  # more mass, less per pixel: not named
    agreement = attribution_agreement(top, by_class, ["saliency", "Grad-CAM", "SmoothGrad", "Integrated Gradients"],
                                      area)
    assert agreement.loc["Happy", "agree"] == expected and agreement.loc["Happy", "methods"] == 2
    assert agreement.loc["Happy", "agrees"] == (expected == 2) and list(agreement.index) == ["Happy"]
    assert agreement.loc["Happy", "saliency agrees"] == (expected == 2) and agreement.loc["Happy", "SmoothGrad"] is None
    assert agreement.loc["Happy", "chance"] == 2 / len(OCCLUDED)  # mouth or its tie, the nose, of the five


def _occlusion_with(effects: dict[str, np.ndarray]) -> Occlusion:
    """An Occlusion of Happy faces whose per-face effects beyond the control are ``effects`` (control drop 0)."""
    n = len(next(iter(effects.values())))
    drop = np.stack([effects.get(r, np.zeros(n)) for r in OCCLUDED], 1)
    rows = {}
    for j, r in enumerate(OCCLUDED):
        low, high = np.percentile(drop[np.random.default_rng(j).integers(0, n, (1000, n)), j].mean(1), [2.5, 97.5])
        rows[(CLASS_NAMES[HAPPY], r)] = {"drop": drop[:, j].mean(), "control": 0.0, "effect": drop[:, j].mean(),
                                         "low": low, "high": high, "faces": n}
    table = pd.DataFrame(rows).T.rename_axis(["class", "region"])
    return Occlusion(np.arange(n), np.full(n, HAPPY), np.ones(n), drop, np.zeros_like(drop), np.zeros_like(drop), table)


def test_ties_are_called_on_the_paired_difference_of_the_same_faces():
    base = np.random.default_rng(0).normal(0.3, 0.2, 30)  # faces differ a lot: the regions' own intervals overlap
    apart = _occlusion_with({"mouth": base + 0.05, "eyes": base}).top().loc[CLASS_NAMES[HAPPY]]
    assert apart["region"] == "mouth" and apart["tied"] == []  # yet the mouth costs 5 pp more on every face
    noise = np.random.default_rng(1).normal(0, 0.1, 30)
    level = _occlusion_with({"mouth": base + noise, "eyes": base - noise}).top().loc[CLASS_NAMES[HAPPY]]
    assert level["tied"] == [({"mouth", "eyes"} - {level["region"]}).pop()]
