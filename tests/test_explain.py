"""Q3-Q4 computations: findings from a known matrix, saliency on known cues, regions and agreement on crafted maps,
the sanity check, every analysis on every device, no side effects."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_lib.evaluate import confusion_findings, misclassified
from fer_lib.explain import (
    METHODS,
    attribution_findings,
    cascading_randomization,
    explainable_copy,
    face_regions,
    method_notes,
    rank_correlation,
    region_shares,
    saliency,
    top_region,
)
from fer_lib.filters import filter_maps, filter_responses, gradient_ascent
from fer_lib.model import build_model, preprocess
from fer_lib.synthetic import make_faces


def labels_from_matrix(matrix):
    y_true, y_pred = [], []
    for t, row in enumerate(matrix):
        for p, n in enumerate(row):
            y_true += [t] * n
            y_pred += [p] * n
    return np.array(y_true), np.array(y_pred)


def test_findings_from_a_hand_built_confusion_matrix():
    #          An Di Fe Ha Sa Su Ne
    matrix = [[60, 5, 10, 5, 10, 0, 10],  # Angry
              [10, 70, 5, 0, 5, 0, 10],  # Disgust
              [5, 0, 40, 5, 30, 15, 5],  # Fear: 30% to Sad
              [0, 0, 2, 95, 1, 1, 1],  # Happy
              [5, 0, 10, 2, 65, 0, 18],  # Sad
              [0, 0, 6, 2, 0, 90, 2],  # Surprise
              [5, 0, 5, 5, 20, 0, 65]]  # Neutral
    findings = confusion_findings(*labels_from_matrix(matrix))
    assert findings.easiest[:2] == ["Happy", "Surprise"] and findings.hardest[0] == "Fear"
    assert findings.confused_pairs[0][:2] == ("Fear", "Sad") and findings.confused_pairs[0][2] == pytest.approx(0.30)
    assert findings.confused_pairs[1][:2] == ("Neutral", "Sad")
    assert all(ok for _, ok, _ in findings.seed_claims())
    text = " ".join(findings.sentences())
    assert "Fear -> Sad (30% of Fear, 30 faces)" in text
    assert findings.report.loc["Happy", "recall"] == pytest.approx(0.95)


def test_findings_say_when_a_seed_claim_fails():
    matrix = np.eye(7, dtype=int) * 50
    matrix[2, 2], matrix[2, 0] = 20, 30  # Fear -> Angry, not Sad
    matrix[1, 1], matrix[1, 6] = 10, 40  # Disgust hardest
    claims = {c: ok for c, ok, _ in confusion_findings(*labels_from_matrix(matrix)).seed_claims()}
    assert claims["Fear is most often mistaken for Sad"] is False
    assert claims["Fear is the most misclassified class"] is False
    y_true, y_pred = labels_from_matrix(matrix)
    assert (y_pred[misclassified(y_true, y_pred, "Fear", "Angry", 100)] == 0).all()


def test_explainable_copy_computes_the_same_function():
    torch.manual_seed(0)
    model, _ = build_model("random")
    model.eval()
    x = torch.randn(3, 3, 48, 48)
    torch.testing.assert_close(explainable_copy(model)(x), model(x))


def test_saliency_falls_on_the_drawn_features(trained_synthetic):
    model, _, _ = trained_synthetic
    images, labels, masks = make_faces(40, seed=99, with_masks=True)
    maps = saliency(model, preprocess(torch.from_numpy(images)), torch.from_numpy(labels))
    features = masks["eyes_brows"] | masks["mouth"] | masks["nose"]
    share = region_shares(maps, {"features": features})["features"]
    area = features.reshape(len(features), -1).mean(1)
    assert np.median(share / area) > 1.5, f"saliency share {share.mean():.2f} vs area {area.mean():.2f}"


def test_cascading_randomisation_decorrelates_plain_saliency(trained_synthetic):
    model, val, _ = trained_synthetic
    x = preprocess(torch.from_numpy(val.images[:6]))
    table = cascading_randomization(model, x, torch.from_numpy(val.labels[:6]), {"saliency": saliency})
    assert table.loc["stem", "saliency"] < 0.5
    assert list(table.index) == ["fc", "layer4", "layer3", "layer2", "layer1", "stem"]


def _snapshot(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
              len(getattr(m, "_backward_pre_hooks", {}))) for m in model.modules()]
    grads = [p.grad is None for p in model.parameters()]
    return state, flags, hooks, grads


@pytest.mark.parametrize("train_mode", [False, True])
def test_explaining_leaves_the_model_exactly_as_it_was(trained_synthetic, train_mode):
    model, val, _ = trained_synthetic
    model.train(train_mode)
    try:
        before = _snapshot(model)
        x, t = preprocess(torch.from_numpy(val.images[:3])), torch.from_numpy(val.labels[:3])
        for fn in METHODS.values():
            fn(model, x, t)
        cascading_randomization(model, x, t, {"saliency": saliency})
        filter_responses(model, val.images[:5])
        filter_maps(model, val.images[None, :2], [0])
        gradient_ascent(model, [0, 1], steps=3)
        after = _snapshot(model)
        for key in before[0]:
            assert torch.equal(before[0][key], after[0][key]), key
        assert before[1:] == after[1:]
    finally:
        model.eval()


def test_confident_correct_picks_per_class_and_skips_mistakes():
    from fer_lib.evaluate import confident_correct

    probs = np.full((6, 7), 0.01)
    probs[[0, 1, 2], 0] = [0.6, 0.9, 0.7]  # three correct Angry faces
    probs[3, 1] = 0.8  # labelled Disgust but predicted Disgust: correct
    probs[4, 0] = 0.9  # labelled Happy, predicted Angry: wrong
    probs[5, 3] = 0.5  # correct Happy
    labels = np.array([0, 0, 0, 1, 3, 3])
    np.testing.assert_array_equal(confident_correct(probs, labels, 1), [1, 3, 5])
    np.testing.assert_array_equal(confident_correct(probs, labels, 2), [1, 2, 3, 5])
    np.testing.assert_array_equal(confident_correct(probs, labels, 2, most_confident=False), [0, 1, 3, 5])


# ------------------------------------------------------------------ Q4 findings on crafted maps, known answers

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("size", [48, 72])
def test_face_regions_partition_the_frame_at_any_size(size):
    regions = face_regions(size)
    assert sum(m.astype(int) for m in regions.values()).tolist() == np.ones((size, size), int).tolist()
    assert 0.05 < regions["outside_face"].mean() < 0.4
    # the same fractions of the frame at every size
    assert abs(regions["mouth"].mean() - face_regions(48)["mouth"].mean()) < 0.02  # up to pixel rounding


@pytest.mark.parametrize("size", [48, 72])
def test_a_map_whose_mass_is_all_in_the_mouth_box(size):
    regions = face_regions(size)
    maps = np.stack([regions["mouth"].astype(np.float32), np.zeros((size, size), np.float32)])
    shares = region_shares(maps, regions)
    assert shares["mouth"][0] == pytest.approx(1.0) and shares["outside_face"][0] == 0
    assert all(np.isnan(v[1]) for v in shares.values())  # an empty map has no distribution
    area = {r: m.mean() for r, m in regions.items()}
    assert top_region({r: v[0] for r, v in shares.items()}, area) == "mouth"
    assert top_region({r: v[1] for r, v in shares.items()}, area) is None


def test_rank_correlation_of_identical_reversed_and_constant_maps():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.random((3, 12, 12))
    b = rng.random((3, 12, 12)).round(1)  # with ties
    np.testing.assert_allclose(rank_correlation(a, a), 1.0)
    np.testing.assert_allclose(rank_correlation(a, 1 - a), -1.0)
    np.testing.assert_allclose(rank_correlation(a, b), [spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)])
    assert np.isnan(rank_correlation(a[:1], np.zeros((1, 12, 12))))[0]


def test_attribution_findings_on_crafted_maps():
    size = 48
    regions = face_regions(size)
    mouth, eyes, out = (regions[r].astype(np.float32) for r in ("mouth", "eyes_brows", "outside_face"))
    noise = np.random.default_rng(0).random((4, size, size)).astype(np.float32) * 1e-5
    labels = np.array([3, 3, 0, 0])  # Happy, Happy, Angry, Angry
    first = np.stack([mouth, mouth, eyes, eyes]) + noise
    maps = {"A": first, "B": first.copy(), "C": np.stack([out, out, out, eyes]) + noise[::-1]}
    findings = attribution_findings(maps, labels)
    tops = findings.top_regions()
    assert tops.loc["Happy", "A"] == tops.loc["Happy", "B"] == "mouth" and tops.loc["Happy", "C"] == "outside_face"
    assert tops.loc["Angry", "A"] == "eyes_brows"
    assert findings.consensus("Happy") == ("mouth", 2)
    assert findings.agreement.loc["Happy", "A / B"] == pytest.approx(1.0)
    assert findings.agreement_matrix().loc["B", "A"] == pytest.approx(1.0)
    assert findings.shares.loc[("Happy", "C"), "outside_face"] == pytest.approx(1.0, abs=0.02)
    assert findings.outside_all["C"] == pytest.approx(0.75, abs=0.02)
    answer = findings.answer()
    assert "the mouth for Happy" in answer and "the eyes/brows for Angry" in answer
    assert "highest for A / B, 1.00" in answer
    assert "C puts 75% of its mass outside the face oval, more than the 32% of the image that lies there" in answer
    text = "\n".join(findings.class_sentences())
    assert "**Disgust**: no correctly classified validation face" in text
    assert ("**Happy** (2 faces). Most attribution for its size: the mouth (A, B), the area outside the face (C)."
            in text)
    assert "Agreement between methods:" in text and "Mass outside the face (32% of the image)" in text


@pytest.mark.parametrize("size,layer3,layer4", [(48, "3x3", "2x2"), (72, "5x5", "3x3")])
def test_method_notes_give_this_runs_numbers(size, layer3, layer4):
    from fer_lib.explain import IG_STEPS, SMOOTHGRAD_SAMPLES

    model, _ = build_model("random")
    notes = method_notes(model, size)
    assert f"map is {layer3} at this run's {size}x{size} input (`layer4`'s is {layer4})" in notes
    assert f"over {SMOOTHGRAD_SAMPLES} copies" in notes and f"in {IG_STEPS} steps" in notes


# ------------------------------------------------------------------ devices and side effects


@pytest.mark.parametrize("device", DEVICES)
def test_every_analysis_runs_on_the_models_device(device):
    """Inputs are built on the CPU, as in the notebooks; the model's device decides where the work runs."""
    torch.manual_seed(0)
    model = build_model("random")[0].eval().to(device)
    faces = np.random.default_rng(0).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    x, t = preprocess(torch.from_numpy(faces), 72), torch.tensor([3, 5])
    for name, fn in METHODS.items():
        maps = fn(model, x, t)
        assert isinstance(maps, np.ndarray) and maps.shape == (2, 72, 72), name
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, name
    table = cascading_randomization(model, x, t, {"saliency": saliency, "Grad-CAM": METHODS["Grad-CAM"]})
    assert table.shape == (6, 2)
    responses = filter_responses(model, faces, 72)
    assert responses.shape == (2, 512)
    images, before, after = gradient_ascent(model, [0, 1], 72, steps=2)
    assert images.shape == (2, 72, 72) and before.shape == after.shape == (2,)
    maps = filter_maps(model, faces[None], [7], 72)
    assert maps.shape == (1, 2, 72, 72) and maps.min() >= 0 and maps.max() <= 1


def test_importing_changes_no_warning_filter():
    import subprocess
    import sys

    code = ("import warnings, torch, scipy.stats, pandas; before = list(warnings.filters); "
            "import fer_lib.explain, fer_lib.filters; assert warnings.filters == before, 'warning filters changed'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_explaining_leaves_the_global_rng_alone_and_is_repeatable():
    from fer_lib.explain import smoothgrad

    torch.manual_seed(0)
    model = build_model("random")[0].eval()
    x, t = preprocess(torch.from_numpy(np.full((2, 48, 48), 128, np.uint8))), torch.tensor([0, 1])
    state = torch.get_rng_state()
    first = smoothgrad(model, x, t, samples=2)
    table = cascading_randomization(model, x, t, {"SmoothGrad": lambda m, x, t: smoothgrad(m, x, t, samples=2)})
    gradient_ascent(model, [0], steps=1)
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(first, smoothgrad(model, x, t, samples=2))
    table_again = cascading_randomization(model, x, t, {"SmoothGrad": lambda m, x, t: smoothgrad(m, x, t, samples=2)})
    assert table.equals(table_again)
