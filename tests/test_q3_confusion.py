"""Q3: the confusion matrix findings, calibration and accuracy by copy, as numbers."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fer_lib import CLASS_NAMES
from fer_lib.model.calibration import ECE_BINS
from fer_lib.questions.q3_confusion import calibration_findings, confusion_findings

AN, DI, FE, HA, SA, SU, NE = range(7)
from tests.test_stats import wilson_by_hand  # noqa: E402


def labels_from_matrix(matrix):
    y_true, y_pred = [], []
    for t, row in enumerate(matrix):
        for p, n in enumerate(row):
            y_true += [t] * n
            y_pred += [p] * n
    return np.array(y_true), np.array(y_pred)


def overlap(a, b):
    return a[0] <= b[1] and b[0] <= a[1]


#            An  Di  Fe  Ha  Sa  Su  Ne
TIE_MATRIX = [[300, 5, 40, 10, 30, 5, 30],  # Angry
              [4, 2, 1, 0, 1, 0, 2],  # Disgust: 10 faces, 20% recall (lowest, but rare); 40% go to Angry
              [30, 0, 200, 10, 60, 58, 22],  # Fear: Sad 60 vs Surprise 58, a near-tie
              [5, 0, 10, 400, 10, 10, 15],  # Happy
              [30, 0, 40, 15, 280, 5, 80],  # Sad: Sad -> Neutral, 80 faces, the most of any cell
              [5, 0, 20, 10, 5, 300, 10],  # Surprise
              [20, 0, 20, 15, 60, 5, 330]]  # Neutral


def test_confusions_are_ranked_by_faces_and_by_rate_with_tie_flags():
    f = confusion_findings(*labels_from_matrix(TIE_MATRIX))
    n = int(np.sum(TIE_MATRIX))
    by_faces, by_rate = f.ranked("faces"), f.ranked("rate")
    assert list(by_faces["faces"]) == sorted(by_faces["faces"], reverse=True)
    assert list(by_rate["rate"]) == sorted(by_rate["rate"], reverse=True)
    assert list(by_faces["rank"][:3]) == [1, 2, 3] and len(by_faces) == len(by_rate) == 35
    # by faces: Sad -> Neutral (80), then Fear -> Sad and Neutral -> Sad (60 each, ordered by rate)
    assert by_faces[["true", "predicted"]][:3].values.tolist() == [
        ["Sad", "Neutral"], ["Fear", "Sad"], ["Neutral", "Sad"]]
    # by rate: Disgust -> Angry, 4 of Disgust's 10 faces (40%), a pair the count ranking puts far down
    top = by_rate.iloc[0]
    assert (top["true"], top["predicted"], top["faces"]) == ("Disgust", "Angry", 4)
    assert top["rate"] == pytest.approx(0.4) and (top["low"], top["high"]) == pytest.approx(wilson_by_hand(4, 10))
    # ties with the top: overlapping 95% intervals (counts as shares of all faces)
    second = by_faces.iloc[1]
    assert second["ties_top"] == overlap(wilson_by_hand(60, n), wilson_by_hand(80, n))
    assert not by_faces.iloc[-1]["ties_top"] and by_faces.iloc[0]["ties_top"]
    sad_neutral = by_rate[(by_rate["true"] == "Sad") & (by_rate["predicted"] == "Neutral")].iloc[0]
    assert sad_neutral["ties_top"]  # 80 of 450 (18%) is within the wide interval of 4 of 10
    clear = [row[:] for row in TIE_MATRIX]
    clear[DI] = [400, 100, 0, 0, 0, 0, 0]  # Disgust -> Angry 80% of 500 faces: nothing else comes near
    assert not confusion_findings(*labels_from_matrix(clear)).ranked("rate").iloc[1]["ties_top"]


def test_a_class_top_confusions_list_only_real_ties():
    f = confusion_findings(*labels_from_matrix(TIE_MATRIX))
    assert f.top_confusions("Fear") == [("Sad", 60), ("Surprise", 58)]
    fear_to_sad = {c.claim: c for c in f.seed_claims()}["fear_to_sad"]
    assert (fear_to_sad.holds, fear_to_sad.rival, fear_to_sad.tie) == (True, "Surprise", True)
    matrix = [row[:] for row in TIE_MATRIX]
    matrix[FE][SU] = 20  # 60 vs 20 of 380: intervals apart
    f = confusion_findings(*labels_from_matrix(matrix))
    assert f.top_confusions("Fear") == [("Sad", 60)]
    fear_to_sad = {c.claim: c for c in f.seed_claims()}["fear_to_sad"]
    assert (fear_to_sad.holds, fear_to_sad.rival, fear_to_sad.tie) == (True, None, False)
    matrix[FE][SU] = 120  # now Surprise leads, clearly
    fear_to_sad = {c.claim: c for c in confusion_findings(*labels_from_matrix(matrix)).seed_claims()}["fear_to_sad"]
    assert (fear_to_sad.holds, fear_to_sad.rival, fear_to_sad.tie) == (False, "Surprise", False)


def test_per_class_metrics_and_macro_f1_match_scikit_learn_with_intervals():
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    y_true, y_pred = labels_from_matrix(TIE_MATRIX)
    f = confusion_findings(y_true, y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred)
    r = f.report
    assert np.allclose(r["precision"], precision) and np.allclose(r["recall"], recall) and np.allclose(r["F1"], f1)
    assert r["support"].tolist() == support.tolist()
    assert f.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert f.accuracy == pytest.approx(np.mean(y_true == y_pred))
    assert f.accuracy_interval == pytest.approx(wilson_by_hand(int(np.trace(TIE_MATRIX)), len(y_true)))
    assert (r.loc["Disgust", "recall_low"], r.loc["Disgust", "recall_high"]) == pytest.approx(wilson_by_hand(2, 10))
    assert (r.loc["Disgust", "precision_low"], r.loc["Disgust", "precision_high"]) == pytest.approx(
        wilson_by_hand(2, 7))  # 7 faces predicted Disgust
    for col in ("precision", "recall", "F1"):
        assert (r[f"{col}_low"] <= r[col] + 1e-9).all() and (r[col] <= r[f"{col}_high"] + 1e-9).all()
    low, high = f.macro_f1_interval
    assert low < f.macro_f1 < high and high - low < 0.1
    assert confusion_findings(y_true, y_pred).macro_f1_interval == f.macro_f1_interval  # seeded bootstrap


def test_rare_class_is_lowest_but_the_hardest_claim_is_checked_among_classes_with_enough_faces():
    f = confusion_findings(*labels_from_matrix(TIE_MATRIX))
    assert f.rare == ["Disgust"]
    assert f.easiest[-1] == "Disgust" and f.common_hardest[:2] == ["Fear", "Sad"] and f.easiest[0] == "Happy"
    claim = {c.claim: c for c in f.seed_claims()}["fear_hardest"]
    fear, sad = wilson_by_hand(200, 380), wilson_by_hand(280, 450)
    assert (claim.holds, claim.rival, claim.tie) == (True, "Sad", overlap(fear, sad))
    matrix = [row[:] for row in TIE_MATRIX]
    matrix[SA] = [30, 0, 40, 15, 200, 5, 160]  # Sad 44%: now the hardest, clearly
    claim = {c.claim: c for c in confusion_findings(*labels_from_matrix(matrix)).seed_claims()}["fear_hardest"]
    assert (claim.holds, claim.rival) == (False, "Sad")


def test_easiest_claim_flags_a_runner_up_within_noise():
    matrix = np.eye(7, dtype=int) * 100
    for c, correct in ((HA, 90), (SU, 80), (NE, 78), (AN, 50), (DI, 50), (FE, 40), (SA, 50)):
        matrix[c, c], matrix[c, (c + 1) % 7] = correct, 100 - correct
    claim = confusion_findings(*labels_from_matrix(matrix)).seed_claims()[0]
    assert (claim.claim, claim.holds, claim.rival, claim.tie) == ("happy_surprise_easiest", True, "Neutral", True)
    matrix[NE, NE], matrix[NE, AN] = 81, 19
    claim = confusion_findings(*labels_from_matrix(matrix)).seed_claims()[0]
    assert (claim.holds, claim.rival, claim.tie) == (False, "Neutral", True)
    matrix[NE, NE], matrix[NE, AN] = 40, 60
    claim = confusion_findings(*labels_from_matrix(matrix)).seed_claims()[0]
    assert (claim.holds, claim.rival, claim.tie) == (True, "Angry", False)


def test_training_frequency_evidence():
    y_true, y_pred = labels_from_matrix(TIE_MATRIX)
    train = np.repeat(np.arange(7), [400, 40, 410, 700, 480, 320, 490])
    f = confusion_findings(y_true, y_pred, train_labels=train)
    assert f.train_share[DI] == pytest.approx(40 / train.size)
    assert -1 <= f.frequency_correlation() <= 1
    assert confusion_findings(y_true, y_pred).frequency_correlation() is None


def test_findings_survive_a_split_without_some_classes():
    f = confusion_findings(np.array([HA, HA, SA]), np.array([HA, SA, SA]))
    assert f.easiest == ["Sad", "Happy"] and len(f.report) == 7 and f.report.loc["Fear", "support"] == 0
    assert [(c.holds, c.rival) for c in f.seed_claims()] == [(None, None)] * 3
    assert f.macro_f1 == pytest.approx(np.mean([2 / 3, 2 / 3]))
    assert f.ranked("rate")[["true", "predicted", "faces"]].values.tolist() == [["Happy", "Sad", 1]]


# --------------------------------------------------------------------------------------------- calibration


def test_temperature_scaling_undoes_a_known_overconfidence_and_one_binning_serves_ece_and_diagram():
    from fer_lib.model.calibration import expected_calibration_error, reliability_table
    from fer_lib.questions import q3_confusion

    rng = np.random.default_rng(0)
    n = 4000
    labels = rng.integers(0, 7, n)
    base = rng.normal(0, 1, (n, 7))
    base[np.arange(n), labels] += 1.5
    # draw the labels from softmax(base): base is then calibrated, and base * 3 over-confident with T = 3
    p = np.exp(base) / np.exp(base).sum(1, keepdims=True)
    labels = np.array([rng.choice(7, p=row) for row in p])
    c = calibration_findings(torch.tensor(base * 3), labels)
    assert c.temperature == pytest.approx(3, rel=0.1)
    assert c.ece_before > 0.1 and c.ece_after < 0.03 and c.ece_after_held_out < 0.04
    assert c.mean_confidence > c.accuracy and c.scaling_helps
    assert c.before["faces"].sum() == c.after["faces"].sum() == n and len(c.before) <= ECE_BINS
    # the ECE is the face-weighted gap of the diagram's own bins
    for table, ece in ((c.before, c.ece_before), (c.after, c.ece_after)):
        assert (table["faces"] * (table["accuracy"] - table["confidence"]).abs()).sum() / n == pytest.approx(ece)
    bins = reliability_table(p, labels)
    assert (bins["faces"] * (bins["accuracy"] - bins["confidence"]).abs()).sum() / n == pytest.approx(
        expected_calibration_error(p, labels))
    assert not hasattr(q3_confusion, "reliability_bins")  # no second binning
    calibrated = calibration_findings(torch.tensor(base), labels)
    assert calibrated.temperature == pytest.approx(1, abs=0.1) and not calibrated.scaling_helps


def fake_context(tmp_path, views=True, votes=True):
    """A finished run's context as the Q3 and appendix pages read it: stored logits, run.json, the split."""
    import json
    from types import SimpleNamespace

    from fer_lib.data.layouts import Dataset, train_val_split
    from fer_lib.model.network import build_model
    from tests.test_q2_history import faces_with_copies
    from tests.test_q3_votes import write_votes

    faces, group = faces_with_copies()
    train, val = train_val_split(faces, 0.2, 3, groups=group)
    rng = np.random.default_rng(0)
    plain = rng.normal(0, 1, (len(val), 7))
    plain[np.arange(len(val)), val.labels] += 1.0  # right on about half the faces
    with_views = plain + rng.normal(0, 0.5, plain.shape)
    (tmp_path / "run.json").write_text(json.dumps({"val_acc_by_tta": {"none": 0.5, "flip": 0.51},
                                                   "tta": "flip" if views else "none", "val_faces": len(val)}))
    if votes:
        write_votes(tmp_path / "train_ferplus.csv", ["0,0,0,0,0,0,0,0,0,0"] * len(faces))
    dataset = Dataset("fer2013", "homework-csv", faces, None, [tmp_path / "train.csv"])
    return SimpleNamespace(run_dir=tmp_path, dataset=dataset, split=(train, val), val=val, runs_root=tmp_path,
                           config=SimpleNamespace(seed=3, val_fraction=0.2, split="grouped", input_size=48),
                           val_logits=torch.tensor(plain),
                           val_logits_views=torch.tensor(with_views if views else plain),
                           test_outputs=lambda: None, model=lambda: build_model("random")[0].eval())


def test_the_q3_page_scores_the_stored_logits_with_the_runs_views(tmp_path, monkeypatch):
    from sklearn.metrics import confusion_matrix

    from fer_lib.questions.q3_confusion import confusion_answer

    monkeypatch.setattr("fer_lib.core.io.default_cache_dir", lambda: None)
    ctx = fake_context(tmp_path)
    q = confusion_answer(ctx)
    y_pred = ctx.val_logits_views.argmax(1).numpy()
    assert (q.confusion.counts == confusion_matrix(ctx.val.labels, y_pred, labels=range(7))).all()
    by_faces = q.confusion.ranked("faces")[["true", "predicted"]].values
    assert list(q.galleries)[:3] == [tuple(r) for r in by_faces[:3]]
    for (true, predicted), idx in q.galleries.items():
        assert len(idx) and all(CLASS_NAMES[ctx.val.labels[i]] == true and CLASS_NAMES[y_pred[i]] == predicted
                                for i in idx)
    assert q.calibration.faces == len(ctx.val) and q.accuracy.with_views == 0.51
    assert q.crowd.votes.shape == (len(ctx.val), 10) and q.copies.near == 0
    assert q.test is None
    assert q.features.xy.shape == (len(ctx.val), 2) and (q.features.labels == ctx.val.labels).all()
    assert q.against_crowd is None  # no annotator voted: no face has a crowd majority
    from fer_lib.questions.q3_votes import FERPLUS_COLUMNS
    from tests.test_q3_votes import VOTE_HEADER, write_votes

    order = [FERPLUS_COLUMNS.index(name) for name in VOTE_HEADER.split(",")[2:]]  # the file's columns, FER+'s order
    rows = [",".join("10" if j == y else "0" for j in order) for y in ctx.dataset.train.labels]
    write_votes(tmp_path / "train_ferplus.csv", rows)  # a crowd that agrees with every FER2013 label, 10 votes of 10
    agreeing = confusion_answer(ctx).against_crowd
    assert (agreeing.counts == q.confusion.counts).all() and agreeing.accuracy == q.confusion.accuracy
    (tmp_path / "no-votes").mkdir()
    without = confusion_answer(fake_context(tmp_path / "no-votes", votes=False))
    assert without.crowd is None and without.against_crowd is None and len(without.features.xy) == len(ctx.val)


def test_pooled_features_are_the_input_of_the_last_layer():
    from fer_lib.model.inference import predict_logits
    from fer_lib.model.network import build_model, preprocess
    from fer_lib.questions.q3_confusion import pooled_features

    torch.manual_seed(0)
    model = build_model("random")[0].eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    features = pooled_features(model, images, 64)
    with torch.no_grad():
        x = preprocess(torch.as_tensor(images), 64)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            x = getattr(model, name)(x)
        assert features.shape == (5, 512) and np.allclose(features, x.mean((2, 3)).numpy(), atol=1e-5)
        logits = model.fc(torch.as_tensor(features))
    assert torch.allclose(logits, predict_logits(model, images, 64), atol=1e-5)


def brute_force_neighbours(features, labels, k):
    """Each face's k nearest other faces by Euclidean distance (ties by index), by hand."""
    d = ((features[:, None] - features[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return labels[np.argsort(d, axis=1, kind="stable")[:, :k]]


def test_feature_map_counts_each_class_neighbours_never_the_face_itself():
    from fer_lib.questions.q3_confusion import feature_map

    rng = np.random.default_rng(0)
    labels = np.repeat([AN, HA, SA, NE], 12)
    centres = rng.normal(0, 1, (7, 20)) * 20
    centres[NE] = centres[SA] + 0.5  # Sad and Neutral share a place; Angry and Happy stand apart
    features = (centres[labels] + rng.normal(0, 1, (len(labels), 20))).astype(np.float32)
    fm = feature_map(features, labels, k=5, perplexity=10)
    near = brute_force_neighbours(features, labels, 5)
    for c in (AN, HA, SA, NE):
        expected = np.bincount(near[labels == c].ravel(), minlength=7) / near[labels == c].size
        assert fm.neighbours[c] == pytest.approx(expected)
    assert fm.neighbours[AN, AN] == fm.neighbours[HA, HA] == 1 and fm.neighbours[SA, NE] > 0.2
    votes = np.array([np.bincount(row, minlength=7).argmax() for row in near])
    assert fm.knn_accuracy == pytest.approx(np.mean(votes == labels)) and fm.neighbours[FE].sum() == 0
    # the map keeps neighbourhoods: every Angry and Happy face's nearest dot on the map is of its class
    d = ((fm.xy[:, None] - fm.xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    apart = np.isin(labels, [AN, HA])
    assert fm.xy.shape == (48, 2) and (labels[d.argmin(1)][apart] == labels[apart]).all()
    twins = np.repeat(np.eye(6, dtype=np.float32) * 100, 2, axis=0)  # 6 pairs of identical faces, far apart
    twins_map = feature_map(twins, np.tile([AN, HA], 6), k=1)  # each face's neighbour is its twin, never itself
    assert twins_map.neighbours[AN, HA] == twins_map.neighbours[HA, AN] == 1


def test_feature_map_plot_draws_every_class_and_readable_text():
    import io

    from PIL import Image

    from fer_lib.plots.q3_confusion import plot_confusion, plot_feature_map
    from fer_lib.plots.show import FIGURE_DPI, MIN_TEXT_PX, figure_png, smallest_text_px

    labels = np.arange(70) % 7
    fig = plot_feature_map(np.random.default_rng(0).normal(size=(70, 2)), labels, title="map")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(CLASS_NAMES)
    width = Image.open(io.BytesIO(figure_png(fig))).size[0]
    assert smallest_text_px(fig, width)[0] >= MIN_TEXT_PX
    # the confusion matrix fits beside its answer on a 1400 px index (340 px of answer, 24 of gap, 2 x 16 of margin)
    fig = plot_confusion(np.ones((7, 7), int) * 100, np.ones((7, 7)) / 7)
    assert Image.open(io.BytesIO(figure_png(fig))).size[0] * 96 / FIGURE_DPI <= 1400 - 32 - 340 - 24


def test_the_appendix_pairs_the_plain_and_the_viewed_predictions(tmp_path, monkeypatch):
    from fer_lib.questions.appendix import appendix_answer

    monkeypatch.setattr("fer_lib.core.io.default_cache_dir", lambda: None)
    ctx = fake_context(tmp_path, votes=False)
    q = appendix_answer(ctx, None)
    plain = ctx.val_logits.argmax(1).numpy() == ctx.val.labels
    viewed = ctx.val_logits_views.argmax(1).numpy() == ctx.val.labels
    g = q.views_gain
    assert (g.only_with, g.only_without) == (int((viewed & ~plain).sum()), int((plain & ~viewed).sum()))
    assert g.gain == pytest.approx(viewed.mean() - plain.mean()) and g.faces == len(ctx.val)
    assert q.recipe is None and q.speedups.size == 0 and q.copies.val_faces == len(ctx.val)
    assert appendix_answer(fake_context(tmp_path, views=False, votes=False), None).views_gain is None


@pytest.mark.skipif(not os.environ.get("FER_DATA"), reason="needs the real data: FER_DATA=<folder of train.csv.gz>")
def test_the_shipped_weights_give_their_recorded_accuracy():
    """On the real data the shipped model, with its own views, scores what its run.json records (within 2 faces:
    the logits are recomputed on another machine)."""
    from fer_lib.questions.q2_history import run_accuracy
    from fer_lib.questions.q3_confusion import confusion_findings
    from fer_lib.report.context import load_context

    ctx = load_context(os.environ["FER_DATA"], device="cpu")
    f = confusion_findings(ctx.val.labels, ctx.val_logits_views.argmax(1).numpy())
    recorded = run_accuracy(json.loads((ctx.run_dir / "run.json").read_text())).with_views
    assert ctx.served is None and abs(f.accuracy - recorded) * f.faces <= 2
