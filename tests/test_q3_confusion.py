"""Q3: the confusion matrix findings, calibration and accuracy by copy, as numbers."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from fer_lib.questions.q3_confusion import calibration_findings, confusion_findings, reliability_bins

AN, DI, FE, HA, SA, SU, NE = range(7)
VOTE_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
from tests.test_stats import wilson_by_hand  # noqa: E402


def labels_from_matrix(matrix):
    y_true, y_pred = [], []
    for t, row in enumerate(matrix):
        for p, n in enumerate(row):
            y_true += [t] * n
            y_pred += [p] * n
    return np.array(y_true), np.array(y_pred)



# --------------------------------------------------------------------------------------------- Q3


#            An  Di  Fe  Ha  Sa  Su  Ne
TIE_MATRIX = [[300, 5, 40, 10, 30, 5, 30],  # Angry
              [4, 2, 1, 0, 1, 0, 2],  # Disgust: 10 faces, 20% recall (lowest, but rare)
              [30, 0, 200, 10, 60, 58, 22],  # Fear: Sad 60 vs Surprise 58, a near-tie
              [5, 0, 10, 400, 10, 10, 15],  # Happy
              [30, 0, 40, 15, 280, 5, 80],  # Sad
              [5, 0, 20, 10, 5, 300, 10],  # Surprise
              [20, 0, 20, 15, 60, 5, 330]]  # Neutral


def test_a_near_tie_is_named_as_a_tie():
    findings = confusion_findings(*labels_from_matrix(TIE_MATRIX))
    assert findings.top_confusions("Fear") == [("Sad", 60), ("Surprise", 58)]
    assert findings.confusion_text("Fear") == "Sad and Surprise about equally (60 vs 58 faces)"
    claims = {c.claim: c for c in findings.seed_claims()}
    fear_to_sad = claims["Fear is most often mistaken for Sad"]
    assert fear_to_sad.holds and fear_to_sad.verdict == "reproduced, as a near-tie"
    assert "Sad and Surprise about equally (60 vs 58 faces)" in fear_to_sad.evidence
    assert "Near-ties" in " ".join(findings.sentences())
    matrix = [row[:] for row in TIE_MATRIX]
    matrix[SA] = [30, 0, 40, 15, 320, 5, 40]  # Sad -> Neutral (40) no longer the top cell: Fear -> Sad (60) is
    findings = confusion_findings(*labels_from_matrix(matrix))
    assert findings.main_pair == ("Fear", "Sad")
    # Neutral -> Sad also has 60 faces: named as a tie, and the ranked table starts with the same pair
    assert ("The main confusion (the most faces) is Fear -> Sad: 60 faces, 16% of Fear, about as many as "
            "Neutral -> Sad (60 faces)") in findings.answer()
    assert findings.pairs_table().iloc[0][["rank", "true", "predicted", "faces"]].tolist() == [1, "Fear", "Sad", 60]


def test_hardest_by_rate_says_when_another_class_has_more_errors_by_count():
    matrix = [row[:] for row in TIE_MATRIX]
    matrix[4][6] = 120  # Sad -> Neutral: Sad now has 210 errors to Fear's 180, at a higher recall (57% vs 53%)
    claim = {c.claim: c for c in confusion_findings(*labels_from_matrix(matrix)).seed_claims()}[
        "Fear is the most misclassified class"]
    assert claim.holds and "by count Sad has" in claim.verdict and "(210 vs 180)" in claim.verdict
    assert "Sad being the larger class" in claim.verdict


def test_small_counts_are_not_called_about_equal():
    findings = confusion_findings(*labels_from_matrix(TIE_MATRIX))
    text = findings.confusion_text("Disgust")  # 4 vs 2 vs 2 faces: within noise, and too few to say "equally"
    assert "too few faces to tell which more often" in text and "about equally" not in text


def test_a_clear_top_confusion_is_not_a_tie():
    matrix = [row[:] for row in TIE_MATRIX]
    matrix[FE][SU] = 20
    findings = confusion_findings(*labels_from_matrix(matrix))
    assert findings.top_confusions("Fear") == [("Sad", 60)]
    claims = {c.claim: c for c in findings.seed_claims()}
    assert claims["Fear is most often mistaken for Sad"].verdict == "reproduced"


def test_rare_class_is_lowest_overall_but_the_claim_is_checked_among_classes_with_enough_faces():
    findings = confusion_findings(*labels_from_matrix(TIE_MATRIX))
    assert findings.rare == ["Disgust"]
    assert findings.hardest[0] == "Disgust" and findings.common_hardest[0] == "Fear"
    claim = {c.claim: c for c in findings.seed_claims()}["Fear is the most misclassified class"]
    assert claim.holds and claim.verdict.startswith("reproduced by rate (recall) among classes with enough faces")
    assert "Disgust 20%" in claim.evidence and "10 faces" in claim.evidence
    answer = findings.answer()
    assert "Fear is the hardest class with enough faces" in answer and "only 10 faces" in answer
    assert findings.main_pair == ("Sad", "Neutral")  # the most faces (80); Disgust -> Angry has the top rate (40%)
    assert "Disgust (10 faces)" in findings.rare_sentence()


def test_recall_intervals_and_pair_intervals_are_wilson():
    findings = confusion_findings(*labels_from_matrix(TIE_MATRIX))
    low, high = wilson_by_hand(2, 10)
    assert (findings.report.loc["Disgust", "recall_low"], findings.report.loc["Disgust", "recall_high"]) == \
        pytest.approx((low, high))
    assert findings.pair_interval("Fear", "Sad") == pytest.approx(wilson_by_hand(60, 380))  # Fear has 380 faces
    assert "Fear -> Sad (16% of Fear, 60 faces), 95% CI" in findings.pair_text("Fear", "Sad")
    table = findings.class_table()
    assert table.loc["Fear", "most often mistaken for"] == "Sad and Surprise about equally (60 vs 58 faces)"
    assert table.loc["Disgust", "recall 95% CI"] == f"{low:.0%}-{high:.0%}"


def test_easiest_claim_says_when_the_runner_up_is_within_noise():
    matrix = np.eye(7, dtype=int) * 100
    for c, correct in ((HA, 90), (SU, 80), (NE, 78), (AN, 50), (DI, 50), (FE, 40), (SA, 50)):
        matrix[c, c], matrix[c, (c + 1) % 7] = correct, 100 - correct
    claim = confusion_findings(*labels_from_matrix(matrix)).seed_claims()[0]
    assert claim.holds and claim.verdict == "reproduced, but Neutral is within noise of Surprise"
    matrix[NE, NE], matrix[NE, AN] = 81, 19
    claim = confusion_findings(*labels_from_matrix(matrix)).seed_claims()[0]
    assert not claim.holds and claim.verdict == "not reproduced, but within noise"


def test_training_frequency_evidence():
    y_true, y_pred = labels_from_matrix(TIE_MATRIX)
    train = np.repeat(np.arange(7), [400, 40, 410, 700, 480, 320, 490])
    findings = confusion_findings(y_true, y_pred, train_labels=train)
    assert findings.train_share[DI] == pytest.approx(40 / train.size)
    assert findings.class_table().loc["Happy", "share of training faces"] == pytest.approx(700 / train.size)
    text = " ".join(findings.sentences())
    assert "the rarest class in training, Disgust" in text and "recall 20%" in text
    assert -1 <= findings.frequency_correlation() <= 1


def test_claims_still_unpack_as_triples():
    for claim, ok, evidence in confusion_findings(*labels_from_matrix(TIE_MATRIX)).seed_claims():
        assert isinstance(claim, str) and isinstance(ok, bool) and evidence


def test_findings_survive_a_split_without_some_classes():
    findings = confusion_findings(np.array([HA, HA, SA]), np.array([HA, SA, SA]))
    assert findings.easiest == ["Sad", "Happy"]
    assert [c.verdict for c in findings.seed_claims()][1:] == ["cannot be checked", "cannot be checked"]
    assert findings.sentences() and findings.answer() and len(findings.class_table()) == 7


# --------------------------------------------------------------------------------------------- calibration


def test_temperature_scaling_undoes_a_known_overconfidence():
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
    assert c.mean_confidence > c.accuracy and "over-confident" in c.sentence()
    assert c.before["faces"].sum() == c.after["faces"].sum() == n
    from fer_lib.model.calibration import expected_calibration_error

    bins = reliability_bins(p, labels)
    ece = (bins["faces"] * (bins["accuracy"] - bins["confidence"]).abs()).sum() / n
    assert ece == pytest.approx(expected_calibration_error(p, labels))  # the diagram's bins are the ECE's


