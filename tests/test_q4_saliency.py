"""Q4 computations: attributions of the grey face on known cues, landmark regions on hand-placed points, region
findings against the randomised network on crafted maps (faces without landmarks left out), deletion and insertion
on a model whose cues are known, the randomisation cascade on every face, every method on every device, no side
effects."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_lib import CLASS_NAMES
from fer_lib.data.landmarks import JAW, LEFT_BROW, LEFT_EYE, MOUTH, NOSE, RIGHT_BROW, RIGHT_EYE
from fer_lib.data.regions import LANDMARK_REGIONS, landmark_regions, region_shares
from fer_lib.data.synthetic import make_faces
from fer_lib.model.network import build_model, preprocess
from fer_lib.questions.q4_saliency import (
    METHODS,
    Explained,
    GreyInput,
    aligned_class_means,
    explain,
    explainable_copy,
    explained_faces,
    randomised_copy,
    rank_correlation,
    region_findings,
    sanity_table,
)

saliency = METHODS["saliency"]
smoothgrad = METHODS["SmoothGrad"]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
HAPPY, ANGRY, SAD = (CLASS_NAMES.index(c) for c in ("Happy", "Angry", "Sad"))


def frontal_points(cx: float = 23.5, cy: float = 24.0, scale: float = 1.0, angle_deg: float = 0.0) -> np.ndarray:
    """(68, 2) landmarks of a frontal face drawn by hand in the iBUG scheme, centred at (cx, cy)."""
    p = np.zeros((68, 2))
    t = np.linspace(np.pi, 0, 17)
    p[JAW] = np.c_[16 * np.cos(t), 2 + 20 * np.sin(t)]  # ear to ear under the chin (y grows downwards)
    p[RIGHT_BROW] = np.c_[np.linspace(-13, -3, 5), -11 - 1.5 * np.sin(np.linspace(0, np.pi, 5))]
    p[LEFT_BROW] = np.c_[np.linspace(3, 13, 5), -11 - 1.5 * np.sin(np.linspace(0, np.pi, 5))]
    eye = np.c_[3 * np.cos(np.linspace(np.pi, -np.pi, 7)[:6]), 1.2 * np.sin(np.linspace(np.pi, -np.pi, 7)[:6])]
    p[RIGHT_EYE], p[LEFT_EYE] = eye + [-8.5, -6], eye + [8.5, -6]
    p[NOSE] = np.r_[np.c_[np.zeros(4), np.linspace(-6, 3, 4)], np.c_[np.linspace(-3, 3, 5), np.full(5, 5)]]
    outer = np.c_[7 * np.cos(np.linspace(np.pi, -np.pi, 13)[:12]), 13 + 3 * np.sin(np.linspace(np.pi, -np.pi, 13)[:12])]
    inner = np.c_[4 * np.cos(np.linspace(np.pi, -np.pi, 9)[:8]), 13 + 1 * np.sin(np.linspace(np.pi, -np.pi, 9)[:8])]
    p[MOUTH] = np.r_[outer, inner]
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (p * scale) @ rotation.T + [cx, cy]


def _pixel(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the pixel under each point (frame pixel i has its centre at coordinate i)."""
    ij = np.clip(np.round(points).astype(int), 0, 47)
    return ij[:, 1], ij[:, 0]


# ------------------------------------------------------------------ landmark regions


def test_landmark_regions_partition_the_frame_and_cover_their_points():
    size = 48
    points = np.stack([frontal_points(), frontal_points(angle_deg=25, scale=0.8, cx=26)])
    regions = landmark_regions(points)
    assert set(regions) == set(LANDMARK_REGIONS)
    assert (sum(m.astype(int) for m in regions.values()) == 1).all()  # every pixel of every face in exactly one
    for i, p in enumerate(points):
        for name, part in (("eyes", np.r_[p[RIGHT_EYE], p[LEFT_EYE]]), ("brows", np.r_[p[RIGHT_BROW], p[LEFT_BROW]]),
                           ("mouth", p[MOUTH]), ("nose", p[NOSE][3:])):
            rows, cols = _pixel(part)
            assert regions[name][i, rows, cols].all(), (i, name)
        # the face's middle is face, the frame's corners are not
        assert not regions["outside_face"][i, size // 2, size // 2]
        assert regions["outside_face"][i, 0, 0] and regions["outside_face"][i, 0, -1]


def test_regions_follow_a_tilted_and_a_smaller_face():
    upright, tilted, small = frontal_points(), frontal_points(angle_deg=30), frontal_points(scale=0.6)
    regions = landmark_regions(np.stack([upright, tilted, small]))
    # the tilted face's eye region sits on its own (rotated) eyes, not where the upright face's eyes were
    rows, cols = _pixel(tilted[LEFT_EYE])
    assert regions["eyes"][1, rows, cols].all()
    rows, cols = _pixel(upright[LEFT_EYE])
    assert not regions["eyes"][1, rows, cols].all()
    # a face 0.6 times the size has features of about 0.36 times the area (margins scale with the face)
    area = {r: m.mean((1, 2)) for r, m in regions.items()}
    for name in ("eyes", "mouth", "nose"):
        assert 0.2 < area[name][2] / area[name][0] < 0.55, name
    assert area["outside_face"][2] > area["outside_face"][0]


def test_region_shares_on_a_map_that_is_all_mouth():
    regions = landmark_regions(frontal_points()[None])
    maps = np.stack([regions["mouth"][0].astype(np.float32), np.zeros((48, 48), np.float32)])
    shares = region_shares(maps, {r: np.repeat(m, 2, 0) for r, m in regions.items()})
    assert shares["mouth"][0] == pytest.approx(1.0) and shares["outside_face"][0] == 0
    assert all(np.isnan(v[1]) for v in shares.values())  # an empty map has no distribution


# ------------------------------------------------------------------ region findings on crafted maps, known answers


def _crafted(n_per_class: int = 20, seed: int = 0):
    """Three classes of faces. Happy faces bring their own mouth cue (teeth): trained AND randomised maps put extra
    mass on the mouth, so it must cancel. Angry faces' trained maps (only) put extra mass on the brows, taken from
    everywhere else. Otherwise trained and randomised maps are alike (spread over the frame)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([HAPPY, ANGRY, SAD], n_per_class)
    points = np.stack([frontal_points(cx=23.5 + rng.normal(0, 1), cy=24 + rng.normal(0, 1)) for _ in labels])
    regions = landmark_regions(points)
    teeth = np.stack([regions["mouth"][i] * (c == HAPPY) for i, c in enumerate(labels)])
    brows = np.stack([regions["brows"][i] * (c == ANGRY) for i, c in enumerate(labels)])
    trained = 0.3 + 0.6 * teeth + 0.6 * brows + rng.random(teeth.shape) * 0.2
    randomised = 0.3 + 0.6 * teeth + rng.random(teeth.shape) * 0.2
    return labels, regions, trained.astype(np.float32), randomised.astype(np.float32)


def _explained(maps: dict, random_maps: dict) -> Explained:
    n = len(next(iter(maps.values())))
    return Explained({m: np.arange(n) for m in maps}, maps, random_maps, {m: np.ones((6, n)) for m in maps},
                     ["fc", "layer4", "layer3", "layer2", "layer1", "stem"])


def test_region_findings_against_the_randomised_network_per_class():
    labels, regions, trained, randomised = _crafted()
    rng = np.random.default_rng(1)
    maps = {"A": trained, "B": trained + rng.random(trained.shape) * 0.02, "C": randomised.copy(),
            "edges": 1 - trained}  # C is the control itself; "edges" says the opposite and is flagged
    found = np.ones(len(labels), bool)
    findings = region_findings(_explained(maps, {m: randomised for m in maps}), regions, labels, found,
                               flagged=["edges"])
    r = findings.vs_random
    assert r.loc[("A", "outside_face"), "sign"] == -1 and r.loc[("A", "brows"), "sign"] == 1
    assert r.loc[("A", "outside_face"), "low"] < r.loc[("A", "outside_face"), "difference"] < r.loc[
        ("A", "outside_face"), "high"] < 0
    assert (r.xs("C", level="method")["sign"] == 0).all()
    assert findings.voters == ["A", "B", "C"]  # "edges" fails the sanity check
    c = findings.by_class
    assert c.loc[("Angry", "A", "brows"), "difference"] > 0.05
    # the teeth cue is in the faces, so the randomised network has it too: Happy's mouth gains nothing beyond it
    assert abs(c.loc[("Happy", "A", "mouth"), "difference"]) < c.loc[("Angry", "A", "brows"), "difference"] / 10
    assert set(c["faces"]) == {20}
    assert findings.area["mouth"] == pytest.approx(regions["mouth"].mean())


def test_faces_without_landmarks_are_left_out_and_counted():
    labels, regions, trained, randomised = _crafted()
    found = np.ones(len(labels), bool)
    found[labels == ANGRY] = False  # the detector missed every Angry face: no Angry rows, no brow effect
    poisoned = trained.copy()
    poisoned[~found] = regions["outside_face"][~found]  # maps that would flip the outside-face finding
    poisoned[found & (labels == HAPPY)] = (randomised - 0.3 * regions["outside_face"])[found & (labels == HAPPY)]
    findings = region_findings(_explained({"A": poisoned}, {"A": randomised}), regions, labels, found)
    assert findings.vs_random.loc[("A", "outside_face"), "faces"] == 40
    assert findings.vs_random.loc[("A", "outside_face"), "sign"] == -1
    assert "Angry" not in set(findings.by_class.index.get_level_values("class"))


def test_no_clear_difference_when_the_maps_are_the_control():
    labels, regions, _, randomised = _crafted()
    other = np.random.default_rng(5).random(randomised.shape).astype(np.float32)
    findings = region_findings(_explained({"A": other}, {"A": np.random.default_rng(6).random(other.shape)}),
                               regions, labels, np.ones(len(labels), bool))
    assert (findings.vs_random["sign"] == 0).all()
    assert (findings.by_class["difference"].abs() < 0.01).all()


# ------------------------------------------------------------------ the maps and the sanity check


def test_grey_input_is_the_models_own_preprocessing():
    torch.manual_seed(0)
    model = build_model("random")[0].eval()
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    grey = torch.from_numpy(faces).float().div(255).unsqueeze(1)
    for size in (48, 72):
        torch.testing.assert_close(GreyInput(model, size)(grey), model(preprocess(torch.from_numpy(faces), size)))


def test_explainable_copy_computes_the_same_function():
    torch.manual_seed(0)
    model, _ = build_model("random")
    model.eval()
    x = torch.randn(3, 3, 48, 48)
    torch.testing.assert_close(explainable_copy(model)(x), model(x))


def test_saliency_falls_on_the_drawn_features(trained_synthetic):
    model, _ = trained_synthetic
    images, labels, masks = make_faces(40, seed=99, with_masks=True)
    maps = saliency(model, images, labels)
    features = masks["eyes_brows"] | masks["mouth"] | masks["nose"]
    share = region_shares(maps, {"features": features})["features"]
    area = features.reshape(len(features), -1).mean(1)
    assert np.median(share / area) > 1.5, f"saliency share {share.mean():.2f} vs area {area.mean():.2f}"


def test_explained_faces_are_correct_capped_per_class_seeded_and_nested():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 300)
    probs = rng.random((300, 7))
    idx = explained_faces(probs, labels, per_class=5)
    assert (probs[idx].argmax(1) == labels[idx]).all()
    assert np.bincount(labels[idx], minlength=7).max() <= 5
    assert (np.diff(labels[idx]) >= 0).all()  # ordered by class
    np.testing.assert_array_equal(idx, explained_faces(probs, labels, per_class=5))
    assert not np.array_equal(idx, explained_faces(probs, labels, per_class=5, seed=1))
    assert np.isin(explained_faces(probs, labels, per_class=2), idx).all()  # the costly methods' faces: a subset
    among = rng.random(300) < 0.5  # only faces whose landmarks were found, nested the same way
    some = explained_faces(probs, labels, per_class=5, among=among)
    assert among[some].all() and np.isin(explained_faces(probs, labels, per_class=2, among=among), some).all()


def test_cascade_runs_on_every_face_and_ends_at_the_randomised_copy(trained_synthetic):
    model, val = trained_synthetic
    faces, target = val.images[:8], val.labels[:8]
    two = {"saliency": saliency, "SmoothGrad": lambda m, x, t, s: smoothgrad(m, x, t, s, samples=2)}
    ex = explain(model, faces, target, methods=two, subsets={"SmoothGrad": np.array([1, 4, 6])}, seed=3)
    assert ex.rho["saliency"].shape == (6, 8) and ex.rho["SmoothGrad"].shape == (6, 3)
    np.testing.assert_array_equal(ex.faces["SmoothGrad"], [1, 4, 6])
    assert ex.random_maps["SmoothGrad"].shape == (3, 48, 48)
    np.testing.assert_allclose(ex.maps["SmoothGrad"], two["SmoothGrad"](model, faces[[1, 4, 6]], target[[1, 4, 6]], 48))
    last = saliency(randomised_copy(model, seed=3), faces, target)
    np.testing.assert_allclose(ex.random_maps["saliency"], last, atol=1e-6)
    np.testing.assert_allclose(ex.rho["saliency"][-1], rank_correlation(ex.maps["saliency"], last), atol=1e-6)
    table = sanity_table(ex)
    assert list(table.loc["saliency"].index) == ex.stages
    assert (table.loc["SmoothGrad", "faces"] == 3).all() and (table.loc["saliency", "faces"] == 8).all()
    assert (table["low"] <= table["rho"] + 1e-9).all() and (table["rho"] <= table["high"] + 1e-9).all()
    assert table.loc[("saliency", "stem"), "rho"] < 0.5


# ------------------------------------------------------------------ devices and side effects


@pytest.mark.parametrize("device", DEVICES)
def test_every_method_gives_grey_48px_maps_on_the_models_device(device):
    """Faces are uint8 on the CPU, as in the notebook; the model's device decides where the work runs."""
    torch.manual_seed(0)
    model = build_model("random")[0].eval().to(device)
    faces = np.random.default_rng(0).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    t = torch.tensor([3, 5])
    for name, fn in METHODS.items():
        maps = fn(model, faces, t, 72)
        assert isinstance(maps, np.ndarray) and maps.shape == (2, 48, 48), name
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() == pytest.approx(1), name
    ex = explain(model, faces, t, 72, {"saliency": saliency, "Grad-CAM": METHODS["Grad-CAM"]})
    assert sanity_table(ex).shape == (12, 4)


def _snapshot(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
              len(getattr(m, "_backward_pre_hooks", {}))) for m in model.modules()]
    grads = [p.grad is None for p in model.parameters()]
    return state, flags, hooks, grads


@pytest.mark.parametrize("train_mode", [False, True])
def test_explaining_leaves_the_model_exactly_as_it_was(trained_synthetic, train_mode):
    model, val = trained_synthetic
    model.train(train_mode)
    try:
        before = _snapshot(model)
        faces, t = val.images[:2], val.labels[:2]
        for fn in METHODS.values():
            fn(model, faces, t)
        explain(model, faces, t, methods={"saliency": saliency})
        randomised_copy(model)
        after = _snapshot(model)
        for key in before[0]:
            assert torch.equal(before[0][key], after[0][key]), key
        assert before[1:] == after[1:]
    finally:
        model.eval()


def test_explaining_leaves_the_global_rng_alone_and_is_repeatable():
    torch.manual_seed(0)
    model = build_model("random")[0].eval()
    faces, t = np.full((2, 48, 48), 128, np.uint8), torch.tensor([0, 1])
    state = torch.get_rng_state()
    first = smoothgrad(model, faces, t, samples=2)
    two = {"SmoothGrad": lambda m, x, t, s: smoothgrad(m, x, t, s, 2)}
    ex = explain(model, faces, t, methods=two)
    randomised_copy(model)
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(first, smoothgrad(model, faces, t, samples=2))
    again = explain(model, faces, t, methods=two)
    np.testing.assert_array_equal(ex.rho["SmoothGrad"], again.rho["SmoothGrad"])
    np.testing.assert_array_equal(ex.random_maps["SmoothGrad"], again.random_maps["SmoothGrad"])


def test_empty_maps_drop_a_class():
    labels, regions, trained, randomised = _crafted()
    blanked = trained.copy()
    blanked[labels == SAD] = 0  # an all-zero map on every Sad face (Grad-CAM's ReLU can give one)
    maps = {"A": blanked, "costly": trained}
    findings = region_findings(_explained(maps, {m: randomised for m in maps}), regions, labels,
                               np.ones(len(labels), bool), methods=["A"])
    assert set(findings.vs_random.index.get_level_values("method")) == {"A"}
    c = findings.by_class
    assert set(c.index.get_level_values("class")) == {"Happy", "Angry"}  # no Sad rows, no all-NaN rows
    assert np.isfinite(c["difference"]).all()
    assert findings.vs_random.loc[("A", "brows"), "faces"] == int((labels != SAD).sum())
    sad = CLASS_NAMES[SAD]
    assert findings.empty["trained"].loc[sad, "A"] == (labels == SAD).sum() == findings.empty["trained"]["A"].sum()
    assert findings.empty["randomised"]["A"].sum() == 0  # which network's maps were empty is kept
    flipped = region_findings(_explained({"A": trained}, {"A": blanked}), regions, labels, np.ones(len(labels), bool))
    assert flipped.empty["randomised"].loc[sad, "A"] == (labels == SAD).sum()
    assert flipped.empty["trained"].to_numpy().sum() == 0
    assert sad not in set(flipped.by_class.index.get_level_values("class"))  # no control map: no Sad rows


def test_aligned_class_means_put_each_faces_mouth_on_the_mean_mouth():
    import matplotlib

    matplotlib.use("Agg")
    from fer_lib.plots.q4_saliency import plot_aligned_maps
    from fer_lib.plots.show import smallest_text_px

    rng = np.random.default_rng(0)
    points = np.stack([frontal_points(cx=23.5 + rng.uniform(-3, 3), cy=24 + rng.uniform(-3, 3),
                                      scale=rng.uniform(0.8, 1.0), angle_deg=rng.uniform(-10, 10)) for _ in range(12)])
    mouths = landmark_regions(points)["mouth"].astype(float)  # each face's map: all on its own mouth
    labels, found = np.repeat([HAPPY, SAD], 6), np.ones(12, bool)
    found[-1] = False  # left out: its points are not trusted
    aligned = aligned_class_means(np.full((12, 48, 48), 128, np.uint8), mouths, np.zeros_like(mouths), points,
                                  labels, found)
    assert aligned["classes"].tolist() == [HAPPY, SAD] and aligned["faces"].tolist() == [6, 5]
    mean_mouth = landmark_regions(aligned["shape"][None])["mouth"][0]
    for mean_map in aligned["map"]:  # the warped maps pile up on the mean shape's mouth
        assert mean_map[mean_mouth].mean() > 0.8 and mean_map[~mean_mouth].mean() < 0.05
    np.testing.assert_allclose(aligned["face"], 128 / 255, atol=1e-6)  # the edges replicated, not black
    fig = plot_aligned_maps(aligned, CLASS_NAMES)
    assert smallest_text_px(fig, 900)[0] >= 9


def test_landmark_fits_are_cached_per_face(tmp_path, monkeypatch):
    from pathlib import Path

    from PIL import Image

    import fer_lib.data.landmarks as lm

    files = sorted((Path(__file__).parent / "data" / "fer2013_test_faces").glob("*.png"))[:6]
    faces = np.stack([np.asarray(Image.open(f)) for f in files])
    plain = lm.face_landmarks(faces[:4])
    for got, want in zip(lm.face_landmarks(faces[:4], cache_dir=tmp_path), plain):
        np.testing.assert_array_equal(got, want)
    fitted = []
    monkeypatch.setattr(lm, "detect_faces", lambda big: fitted.append(1) or [])  # now finds nothing
    points, found = lm.face_landmarks(faces[[5, 1, 4, 1]], cache_dir=tmp_path)  # two new faces, one repeated
    assert len(fitted) == 2 and not found[[0, 2]].any()
    np.testing.assert_array_equal(points[[1, 3]], plain[0][[1, 1]])
    np.testing.assert_array_equal(found[[1, 3]], plain[1][[1, 1]])
