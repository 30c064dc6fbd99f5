"""Q3: the confusion matrix findings, calibration and accuracy by copy, as numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_lib.questions.q3_confusion import accuracy_by_copy, calibration_findings, confusion_findings

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
    assert f.top_pairs(3) == [("Sad", "Neutral"), ("Fear", "Sad"), ("Neutral", "Sad")]
    # by rate: Disgust -> Angry, 4 of Disgust's 10 faces (40%), a pair the count ranking puts far down
    top = by_rate.iloc[0]
    assert (top["true"], top["predicted"], top["faces"]) == ("Disgust", "Angry", 4)
    assert top["rate"] == pytest.approx(0.4) and (top["low"], top["high"]) == pytest.approx(wilson_by_hand(4, 10))
    assert f.top_pairs(1, by="rate") == [("Disgust", "Angry")]
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
    assert f.hardest[0] == "Disgust" and f.common_hardest[:2] == ["Fear", "Sad"] and f.easiest[0] == "Happy"
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
    assert c.over_confident and c.scaling_helps
    assert c.before["faces"].sum() == c.after["faces"].sum() == n and len(c.before) <= c.bins
    # the ECE is the face-weighted gap of the diagram's own bins
    for table, ece in ((c.before, c.ece_before), (c.after, c.ece_after)):
        assert (table["faces"] * (table["accuracy"] - table["confidence"]).abs()).sum() / n == pytest.approx(ece)
    bins = reliability_table(p, labels)
    assert (bins["faces"] * (bins["accuracy"] - bins["confidence"]).abs()).sum() / n == pytest.approx(
        expected_calibration_error(p, labels))
    assert not hasattr(q3_confusion, "reliability_bins")  # no second binning
    calibrated = calibration_findings(torch.tensor(base), labels)
    assert calibrated.temperature == pytest.approx(1, abs=0.1) and not calibrated.scaling_helps


def test_accuracy_by_copy_counts_and_flags_a_tie():
    y = np.array([0, 1, 2, 3, 4, 5])
    a = accuracy_by_copy(y, np.array([0, 1, 2, 3, 0, 0]), np.array([1, 1, 1, 0, 0, 0]))
    assert (a.with_copy, a.without_copy) == (3, 3)
    assert a.accuracy_with == 1 and a.accuracy_without == pytest.approx(1 / 3)
    assert a.interval_without == pytest.approx(wilson_by_hand(1, 3)) and a.tie  # 3 faces each: within noise
    big = accuracy_by_copy(np.zeros(400, int), np.r_[np.zeros(290, int), np.ones(110, int)],
                           np.r_[np.ones(200), np.zeros(200)])  # 100% vs 45%
    assert not big.tie and big.accuracy_without == pytest.approx(0.45)
