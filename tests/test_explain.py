"""Q3-Q5 computations: findings from a known matrix, saliency on known cues, sanity check, no side effects."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_lib import CLASS_NAMES
from fer_lib.evaluate import confusion_findings, misclassified
from fer_lib.explain import (METHODS, cascading_randomization, explainable_copy, face_regions, region_shares,
                             saliency)
from fer_lib.filters import filter_responses, gradient_ascent, top_faces
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
        gradient_ascent(model, [0, 1], steps=3)
        after = _snapshot(model)
        for key in before[0]:
            assert torch.equal(before[0][key], after[0][key]), key
        assert before[1:] == after[1:]
    finally:
        model.eval()


def test_gradient_ascent_raises_each_target_filter(trained_synthetic):
    model, val, _ = trained_synthetic
    responses, _ = filter_responses(model, val.images)
    chosen = np.argsort(-responses.max(0))[:8]
    images, before, after = gradient_ascent(model, chosen, steps=40)
    assert images.shape == (8, 48, 48) and images.min() >= 0 and images.max() <= 1
    assert (after > before).all(), list(zip(before, after))


def test_top_faces_are_the_strongest_responders():
    responses = np.array([[0.1, 5.0], [3.0, 0.2], [2.0, 4.0]])
    np.testing.assert_array_equal(top_faces(responses, np.array([0, 1]), k=2), [[1, 2], [0, 2]])


def test_face_regions_are_disjoint_where_they_should_be():
    regions = face_regions(48)
    assert not (regions["eyes_brows"] & regions["mouth"]).any()
    assert 0.05 < regions["outside_face"].mean() < 0.4


def test_pick_filters_spreads_over_classes_and_skips_inactive():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), 10)
    responses = rng.normal(0, 0.1, (70, 20))
    for c in range(7):
        responses[labels == c, c] += 3  # filter c fires for class c
    responses[:, 19] = -1  # never fires
    from fer_lib.filters import pick_filters

    chosen = pick_filters(responses, labels, 7)
    assert sorted(chosen.tolist()) == list(range(7))
    assert 19 not in pick_filters(responses, labels, 19)


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


def test_region_sentences_and_mix_caption():
    import pandas as pd

    from fer_lib.explain import region_sentences
    from fer_lib.filters import mix_caption

    table = pd.DataFrame({"eyes_brows": [0.2, 0.25], "mouth": [0.5, 0.1], "outside_face": [0.1, 0.3]},
                         index=["Happy", "(share of image area)"])
    (line,) = region_sentences(table)
    assert line.startswith("**Happy**: eyes/brows 20% (0.8x their area), mouth 50% (5.0x)")
    assert line.endswith("the mouth region counts most for its size.")
    assert mix_caption(np.array([0, 0, 1, 0, 0, 8, 0]) / 9) == "Surprise 8, Fear 1"
