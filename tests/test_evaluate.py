"""Q2/Q3 findings on crafted inputs whose answer is known: intervals, ties, fit verdicts, FER+ votes."""
from __future__ import annotations

import gzip
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch

from fer_lib.data import Dataset, FaceSet
from fer_lib.evaluate import (
    accuracy_by_copy,
    calibration_findings,
    confusion_findings,
    counts_tie,
    history_findings,
    history_table,
    proportions_tie,
    recipe_table,
    reliability_bins,
    run_accuracy,
    split_copies,
    wilson_interval,
)
from fer_lib.inference import predict_logits
from fer_lib.model import build_model
from fer_lib.votes import (
    VotesError,
    crowd_summary,
    load_votes,
    pair_evidence,
    read_votes,
    votes_file_for,
)

AN, DI, FE, HA, SA, SU, NE = range(7)
VOTE_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def labels_from_matrix(matrix):
    y_true, y_pred = [], []
    for t, row in enumerate(matrix):
        for p, n in enumerate(row):
            y_true += [t] * n
            y_pred += [p] * n
    return np.array(y_true), np.array(y_pred)


# --------------------------------------------------------------------------------------------- intervals


def wilson_by_hand(k, n, z=1.959964):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_interval_matches_the_formula_on_known_cases():
    low, high = wilson_interval(0, 10)
    assert float(low) == 0.0 and float(high) == pytest.approx(3.8415 / 13.8415, abs=1e-4)  # z^2 / (n + z^2)
    low, high = wilson_interval(5, 10)
    assert (float(low), float(high)) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert (float(low), float(high)) == pytest.approx(wilson_by_hand(5, 10))
    low, high = wilson_interval(10, 10)
    assert float(high) == pytest.approx(1.0) and float(low) == pytest.approx(1 - 3.8415 / 13.8415, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_agrees_with_scipy_and_broadcasts():
    from scipy.stats import binomtest

    k, n = np.array([1, 7, 33, 60, 480]), np.array([3, 40, 50, 512, 500])
    low, high = wilson_interval(k, n)
    for i in range(len(k)):
        ci = binomtest(int(k[i]), int(n[i])).proportion_ci(method="wilson")
        assert (low[i], high[i]) == pytest.approx((ci.low, ci.high), abs=1e-6)


def test_ties_between_counts_and_between_proportions():
    assert counts_tie(60, 58)  # the seed's "Fear mostly as Sad": 60 vs 58 faces is noise
    assert not counts_tie(60, 30)
    assert counts_tie(0, 0)
    assert proportions_tie(40, 100, 45, 100)
    assert not proportions_tie(90, 100, 50, 100)


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


# --------------------------------------------------------------------------------------------- Q2


def history(val_acc, train_acc=None, val_loss=None, train_ce=True, tta=True):
    n = len(val_acc)
    val_acc = np.asarray(val_acc, dtype=float)
    h = pd.DataFrame({"epoch": np.arange(1, n + 1), "train_loss": np.linspace(2.0, 1.0, n) + 0.3,
                      "train_acc": np.asarray(train_acc if train_acc is not None else val_acc - 0.02, dtype=float),
                      "val_loss": np.asarray(val_loss if val_loss is not None else 2.2 - val_acc * 2, dtype=float),
                      "val_acc": val_acc, "lr": 1e-3, "seconds": 1.0})
    if train_ce:
        h.insert(2, "train_ce", np.linspace(2.0, 1.0, n))
    if tta:
        h.insert(6, "val_acc_tta", val_acc + 0.01)
    return h


N_VAL = 2856  # SE at p = 0.6: 0.92 points


def test_history_still_improving():
    f = history_findings(history([0.40, 0.50, 0.55, 0.58, 0.60, 0.62, 0.64, 0.66, 0.68, 0.70]), N_VAL)
    assert f.window == 2 and f.trend == "still improving"
    assert f.recent_best == pytest.approx(0.70) and f.earlier_best == pytest.approx(0.66)
    assert "still improving while the learning rate was high" in f.answer()
    assert f.verdict == "fits well"


def test_history_levelled_off_within_one_standard_error():
    acc = [0.40, 0.50, 0.55, 0.58, 0.60, 0.62, 0.630, 0.634, 0.636, 0.635]
    f = history_findings(history(acc), N_VAL)
    assert f.val_se == pytest.approx(math.sqrt(0.636 * 0.364 / N_VAL))
    assert f.trend == "levelled off" and f.best_epoch == 9
    assert "levelled off" in f.trend_sentence() and "2,856 validation faces" in f.trend_sentence()
    # with far fewer validation faces the same rise (0.4 points) is noise too; with a huge set it is a real gain
    assert history_findings(history(acc), 10**7).trend == "still improving"


def test_history_overfitting():
    acc = [0.40, 0.50, 0.58, 0.62, 0.62, 0.61, 0.60, 0.59, 0.58, 0.57]
    train = [0.40, 0.52, 0.62, 0.70, 0.75, 0.80, 0.84, 0.87, 0.90, 0.92]
    loss = [1.8, 1.4, 1.2, 1.1, 1.12, 1.18, 1.25, 1.30, 1.36, 1.42]
    f = history_findings(history(acc, train, loss), N_VAL)
    assert f.verdict == "overfits" and f.trend == "declining"
    assert f.val_loss_rising_since == 5 and f.final_gap == pytest.approx(0.35)
    assert "overfits" in f.answer() and "validation loss rises from epoch 5" in f.verdict_sentence()


def test_history_underfitting_quick_run():
    # the shape of the 3-epoch quick run: training accuracy below validation, both low
    f = history_findings(history([0.224, 0.378, 0.383], [0.240, 0.293, 0.353], [1.88, 1.61, 1.57]), N_VAL)
    assert f.verdict == "underfits" and f.window == 1 and f.trend == "levelled off"
    assert f.val_loss_falling_at_end and f.comparable_losses


def test_old_history_without_new_columns_is_handled():
    from fer_lib.plots import plot_history

    old = history([0.3, 0.4, 0.45], train_ce=False, tta=False)
    f = history_findings(old, N_VAL)
    assert f.missing == ["train_ce", "train_eval_acc", "val_acc_raw"] and f.train_loss_column == "train_loss"
    assert f.train_column == "train_acc" and "augmented batches" in f.verdict_sentence()
    assert "label-smoothed" in f.loss_sentence() and f.average_sentence() == ""
    assert "does not record plain training cross-entropy or training accuracy scored like validation" in f.sentence()
    assert plot_history(old) is not None and plot_history(history([0.3, 0.4])) is not None


def test_one_epoch_is_too_short_to_tell():
    f = history_findings(history([0.3]), N_VAL)
    assert f.trend == "too short to tell" and f.earlier_best is None and "too short" in f.answer()


# --------------------------------------------------------------------------------------------- device


class DeviceSpy(torch.nn.Module):
    """A stand-in model whose parameter lives on ``device`` and which records where its inputs arrive (the
    "meta" device has no data, so this runs on any machine and still tells the devices apart)."""

    def __init__(self, device):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device=device))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.device.type)
        return torch.zeros(len(x), 7)


def test_predict_logits_takes_the_device_from_the_model():
    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    spy = DeviceSpy("meta")
    assert predict_logits(spy, faces).shape == (5, 7)
    assert spy.seen == ["meta"], "the batch goes where the model's parameters are"
    spy.seen.clear()
    predict_logits(spy, faces, device="cpu")
    assert spy.seen == ["cpu"], "an explicit device wins"
    if torch.cuda.is_available():
        torch.manual_seed(0)
        model, _ = build_model("random")
        torch.testing.assert_close(predict_logits(model.cuda(), faces), predict_logits(model.cpu(), faces),
                                   atol=1e-3, rtol=1e-3)


def test_test_time_views_are_the_face_its_mirror_and_small_shifts():
    from fer_lib.inference import tta_views

    x = torch.arange(2 * 3 * 72 * 72, dtype=torch.float32).reshape(2, 3, 72, 72)
    assert len(tta_views(x, "none")) == 1 and len(tta_views(x, "flip")) == 2
    views = tta_views(x, "flip+shift")
    assert len(views) == 6 and all(v.shape == x.shape for v in views)
    torch.testing.assert_close(views[1], x.flip(3))
    # 2 pixels of 48 are 3 of 72: the face moved down by 3, its top row repeated where the shift uncovers it
    torch.testing.assert_close(views[2][..., 3:, :], x[..., :-3, :])
    torch.testing.assert_close(views[2][..., :3, :], x[..., :1, :].expand(-1, -1, 3, -1))
    torch.testing.assert_close(views[5][..., :, :-3], x[..., :, 3:])
    with pytest.raises(ValueError, match="tta must be one of"):
        tta_views(x, "crop")


# --------------------------------------------------------------------------------------------- FER+ votes


def write_votes(path, rows, header=VOTE_HEADER):
    text = header + "\n" + "".join(f"Training,fer{i:07d}.png,{r}\n" for i, r in enumerate(rows))
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def homework_dataset(folder, n):
    faces = FaceSet(np.zeros((n, 48, 48), np.uint8), np.zeros(n, np.int64), np.arange(n))
    return Dataset("fer2013", "homework-csv", faces, None, [folder / "train.csv.gz", folder / "test.csv.gz"])


def test_votes_are_found_next_to_the_train_file_and_mapped_by_name(tmp_path):
    # neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
    write_votes(tmp_path / "train_ferplus.csv.gz", ["1,0,0,0,9,0,0,0,0,0", "0,0,3,4,0,0,2,0,1,0"])
    dataset = homework_dataset(tmp_path, 2)
    assert votes_file_for(dataset) == tmp_path / "train_ferplus.csv.gz"
    votes = load_votes(dataset)
    assert votes[0].tolist() == [9, 0, 0, 0, 0, 0, 1, 0, 0, 0]  # Angry ... Neutral, contempt, unknown, NF
    assert votes[np.array([1])].tolist() == [[0, 0, 2, 0, 4, 3, 0, 0, 1, 0]] and votes.annotators == 10


def test_no_votes_file_means_no_votes(tmp_path):
    assert load_votes(homework_dataset(tmp_path, 2)) is None


@pytest.mark.parametrize("rows, header, message", [
    (["1,0,0,0,9,0,0,0,0,0"] * 3, VOTE_HEADER, "3 rows of votes, but"),
    (["1,0,0,0,9,0,0,0,0,0", "1,0,x,0,9,0,0,0,0,0"], VOTE_HEADER, "line 3: column 'surprise' is 'x'"),
    (["1,0,0,0,9,0,0,0,0,0", "1,0,0,0,9"], VOTE_HEADER, "line 3: 7 fields, expected 12"),
    (["1,0,0,0,9,0,0,0,0"] * 2, VOTE_HEADER.replace(",NF", ""), "line 1: missing vote column(s) NF"),
])
def test_bad_votes_files_are_refused_naming_file_and_line(tmp_path, rows, header, message):
    path = write_votes(tmp_path / "train_ferplus.csv", rows, header)
    with pytest.raises(VotesError, match="train_ferplus.csv") as err:
        read_votes(path, expected_rows=2, train_file=tmp_path / "train.csv.gz")
    assert message in str(err.value)


def test_pair_evidence_counts_crowd_support_among_errors_and_correct_faces():
    # 4 Fear faces predicted Sad (3 with >= 3 Sad votes), 5 correct Fear faces (1 with >= 3 Sad votes)
    y_true = np.array([FE] * 9 + [HA])
    y_pred = np.array([SA] * 4 + [FE] * 5 + [HA])
    sad_votes = [5, 3, 4, 1, 0, 0, 3, 1, 2, 0]
    votes = np.zeros((10, 10), int)
    votes[:, SA] = sad_votes
    votes[:, FE] = 10 - votes[:, SA]
    e = pair_evidence(votes, y_true, y_pred, "Fear", "Sad")
    assert (e.errors, e.errors_backed, e.correct, e.correct_backed) == (4, 3, 5, 1)
    assert e.share_errors == pytest.approx(0.75) and e.share_correct == pytest.approx(0.2)
    assert "Of the 4 Fear faces predicted as Sad, 3 (75%" in e.sentence()
    assert e.short().startswith("On 75% of those 4 faces at least 3 of 10 FER+ annotators also chose Sad")
    from fer_lib.votes import crowd_pairs_table

    row = crowd_pairs_table([e]).iloc[0]
    assert ((row["errors"], row["correct faces"], row["errors 95% CI"])
            == (4, 5, "{:.0%}-{:.0%}".format(*wilson_by_hand(3, 4))))


def test_crowd_summary_on_known_votes():
    y_true = np.array([HA, HA, SA, FE])
    y_pred = np.array([HA, SA, SA, SA])
    votes = np.zeros((4, 10), int)
    votes[0, HA] = 10  # agrees, correct, not split
    votes[1, [HA, SA]] = [6, 4]  # agrees, wrong, crowd backs Sad
    votes[2, [SA, NE]] = [4, 6]  # plurality Neutral: disagrees with the label; correct but split (6 Neutral)
    votes[3, [FE, SA, 9]] = [3, 2, 5]  # agrees (Fear is the 7-class plurality); wrong, only 2 Sad votes
    s = crowd_summary(votes, y_true, y_pred)
    assert s.faces[[HA, SA, FE]].tolist() == [2, 1, 1] and s.plurality_agrees[[HA, SA, FE]].tolist() == [2, 0, 1]
    assert (s.errors, s.errors_backed, s.correct, s.correct_split) == (2, 1, 2, 1)
    assert "3 of 4 validation faces (75%" in s.sentences()[0]
    assert "lowest for Sad (0% of 1 faces)" in s.sentences()[0]
    assert s.agreement_table().loc["Happy", "crowd's top choice = label"] == 1.0


def test_vote_gallery_and_frequency_plot_draw():
    from fer_lib.plots import plot_recall_vs_frequency, plot_vote_gallery

    votes = np.tile(np.arange(10), (3, 1))
    fig = plot_vote_gallery(np.zeros((3, 48, 48), np.uint8), votes, ["a", "b", "c"], "Fear", "Sad", ncols=2)
    assert len(fig.axes) == 6
    findings = confusion_findings(*labels_from_matrix(TIE_MATRIX), train_labels=np.arange(7).repeat(10))
    r = findings.report
    assert plot_recall_vs_frequency(findings.train_share, r["recall"], r["recall_low"], r["recall_high"],
                                    findings.support) is not None


def test_crowd_evidence_uses_the_faces_ids_as_rows_and_is_optional(tmp_path):
    from fer_lib.votes import Votes, crowd_answer, crowd_evidence

    counts = np.zeros((6, 10), int)
    counts[:, NE] = 10
    counts[4, [FE, SA]] = [5, 5]  # row 4 is the one Fear face predicted Sad: the crowd backs Sad
    faces = FaceSet(np.zeros((2, 48, 48), np.uint8), np.array([FE, NE]), np.array([4, 1]))
    crowd = crowd_evidence(Votes(counts, tmp_path / "train_ferplus.csv"), faces, np.array([SA, NE]), [("Fear", "Sad")])
    assert crowd.votes.tolist() == counts[[4, 1]].tolist() and crowd.source == "train_ferplus.csv"
    assert (crowd.pair("Fear", "Sad").errors, crowd.pair("Fear", "Sad").errors_backed) == (1, 1)
    assert crowd_answer(crowd, ("Fear", "Sad")).startswith("On 100% of those 1 faces")
    assert crowd_evidence(None, faces, np.array([SA, NE]), [("Fear", "Sad")]) is None
    assert "No FER+" in crowd_answer(None, ("Fear", "Sad"))


def test_main_confusion_is_the_cell_with_the_most_faces_and_heads_the_ranked_table():
    findings = confusion_findings(*labels_from_matrix(TIE_MATRIX))
    # by faces: Sad -> Neutral 80, then Fear -> Sad 60 and Neutral -> Sad 60 (ties broken by rate)
    assert findings.top_pairs(3) == [("Sad", "Neutral"), ("Fear", "Sad"), ("Neutral", "Sad")]
    table = findings.pairs_table()
    assert list(table["faces"]) == sorted(table["faces"], reverse=True) and list(table["rank"]) == [1, 2, 3, 4, 5, 6]
    assert tuple(table.iloc[0][["true", "predicted"]]) == findings.main_pair
    assert "The main confusion (the most faces) is Sad -> Neutral: 80 faces" in findings.answer()
    # 80 vs 60 faces: the Wilson interval of 80/140 (49%-65%) contains one half, so the runner-up is named
    assert findings.runner_up_ties() and "about as many as Fear -> Sad (60 faces)" in findings.answer()
    assert "Largest off-diagonal cell: Sad predicted as Neutral, 80 faces" in findings.figure_alt()
    matrix = [row[:] for row in TIE_MATRIX]
    matrix[SA] = [30, 0, 40, 15, 240, 5, 120]  # 120 vs 60: a clear main confusion
    clear = confusion_findings(*labels_from_matrix(matrix))
    assert not clear.runner_up_ties() and "about as many" not in clear.answer()


def test_frequency_plot_survives_recalls_of_0_and_100_percent():
    from fer_lib.plots import plot_recall_vs_frequency

    findings = confusion_findings(np.array([HA, HA, SA, SA]), np.array([HA, HA, HA, HA]), train_labels=np.arange(7))
    r = findings.report
    assert plot_recall_vs_frequency(findings.train_share, r["recall"], r["recall_low"], r["recall_high"],
                                    findings.support) is not None


# --------------------------------------------------------------------------------------------- Q2, like for like


def one_cycle(n, peak=0.05):
    """A one-cycle-like schedule: warm-up to the peak at 30% of the run, then a cosine down to near zero."""
    up = max(1, int(0.3 * n))
    return np.r_[np.linspace(peak / 25, peak, up), peak / 2 * (1 + np.cos(np.linspace(0, np.pi, n - up)))] + 1e-6


def test_overfitting_is_judged_on_training_faces_scored_like_validation():
    acc = [0.40, 0.50, 0.56, 0.60, 0.62, 0.63, 0.64, 0.645, 0.648, 0.65]
    # augmented batches: below validation, as heavy augmentation makes them
    h = history(acc, train_acc=np.asarray(acc) - 0.03)
    f = history_findings(h, N_VAL)
    assert f.train_column == "train_acc" and f.verdict == "fits well"
    h["train_eval_acc"] = np.asarray(acc) + np.linspace(0.01, 0.22, len(acc))  # the clean view: 22 points above
    f = history_findings(h, N_VAL, train_faces=1000)
    assert f.train_column == "train_eval_acc" and f.verdict == "overfits"
    assert f.gap_at_kept == pytest.approx(0.22) and f.train_faces == 1000
    # the gap's standard error combines both samples: 1,000 training faces and the validation faces
    assert f.gap_se == pytest.approx(math.sqrt(0.87 * 0.13 / 1000 + 0.65 * 0.35 / N_VAL))
    sentence = f.verdict_sentence()
    assert "1,000 training faces, scored exactly as validation is" in sentence and "22.0 points above" in sentence
    assert "not clearly cost validation accuracy yet" in sentence  # no decline, no rising loss


def test_a_late_rise_while_the_rate_anneals_is_not_evidence_for_more_epochs():
    acc = [0.40, 0.50, 0.55, 0.58, 0.60, 0.61, 0.62, 0.62, 0.625, 0.63, 0.64, 0.655, 0.67, 0.68, 0.685]
    h = history(acc)
    h["lr"] = one_cycle(len(acc))
    f = history_findings(h, N_VAL)
    assert f.trend == "rising as the rate anneals" and f.window == 3
    assert f.lr_window[1] < 0.25 * f.lr_peak
    text = f.trend_sentence()
    assert "not evidence that more epochs would help" in text and "learning rate went from" in text
    # the same rise at a constant rate is still improvement
    assert history_findings(history(acc), N_VAL).trend == "still improving"


def test_the_kept_epoch_is_judged_and_a_higher_earlier_peak_is_named():
    acc = [0.40, 0.50, 0.62, 0.60, 0.61]
    h = history(acc)
    h["val_acc_tta"] = [0.41, 0.51, 0.615, 0.62, 0.63]
    h["train_eval_acc"] = [0.41, 0.52, 0.64, 0.70, 0.75]
    f = history_findings(h, N_VAL, train_faces=1000, kept_epoch=5)
    assert (f.kept_epoch, f.best_epoch) == (5, 3)
    assert f.kept_val_acc == pytest.approx(0.61) and f.gap_at_kept == pytest.approx(0.14)
    text = f.kept_sentence()
    assert "epoch 5 of 5" in text and "plain peak of 62.0% at epoch 3" in text and "63.0% against 61.5%" in text
    assert "1.0 points below" in text and "highest flip figure" not in text  # epoch 5 is also the flip maximum
    h.loc[3, "val_acc_tta"] = 0.64
    text = history_findings(h, N_VAL, train_faces=1000, kept_epoch=5).kept_sentence()
    assert "the run's highest flip figure, 64.0% at epoch 4, not picked" in text
    assert "from epoch 5 of 5: 61.0% validation accuracy, 63.0% with flip views" in f.answer()
    assert "kept weights 61.0% at epoch 5" in f.figure_alt(h)
    # without a kept epoch (older runs) the best epoch is the kept one
    assert history_findings(h, N_VAL).kept_epoch == 3
    with pytest.raises(ValueError, match="kept epoch 9"):
        history_findings(h, N_VAL, kept_epoch=9)


def test_the_averaged_and_the_stepped_weights_are_both_reported():
    acc = [0.40, 0.50, 0.55, 0.60]
    h = history(acc)
    h["val_acc_raw"] = [0.42, 0.49, 0.57, 0.58]
    f = history_findings(h, N_VAL)
    assert f.raw_at_kept == pytest.approx(0.58) and f.raw_best == pytest.approx(0.58)
    assert "the average scores 60.0% and the weights the optimiser steps 58.0%" in f.average_sentence()
    h["train_eval_acc"] = [0.41, 0.52, 0.58, 0.66]
    assert "stepped weights' validation accuracy ends at 58.0%" in history_findings(h, N_VAL).figure_alt(h)
    table = history_table(h)
    assert "validation accuracy, stepped weights" in table.columns and "seconds" not in table.columns


# --------------------------------------------------------------------------------------------- copies across the split


def faces_with_copies(n=400, copies=60, seed=0):
    """``n`` random faces whose first ``copies`` are repeated once more (pixel-identical) at the end."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 7, n)
    images = np.concatenate([images, images[:copies]])
    labels = np.concatenate([labels, labels[:copies]])
    group = np.concatenate([np.arange(n), np.arange(copies)])  # copy k joins face k's group
    return FaceSet(images, labels, np.arange(len(images))), group


def test_split_copies_counts_validation_faces_with_a_training_copy():
    from fer_lib.data import train_val_split

    faces, group = faces_with_copies()
    c = split_copies(faces, group, group, val_fraction=0.2, seed=3)
    train, val = train_val_split(faces, 0.2, 3)  # the random split, recounted by hand
    by_hand = sum(int(any(group[j] == group[i] for j in train.ids)) for i in val.ids)
    assert c.random_exact == c.random_near == by_hand > 0 and c.val_faces_random == len(val)
    assert c.grouped_exact == c.grouped_near == 0  # grouping keeps each copy with its original
    assert f"{by_hand:,} of its {len(val):,} validation faces" in c.sentence("grouped")
    assert "0 of its" in c.sentence("grouped") and "inflated" in c.sentence("random")


def test_accuracy_with_and_without_a_copy():
    y = np.array([0, 1, 2, 3, 4, 5])
    pred = np.array([0, 1, 2, 0, 0, 5])
    a = accuracy_by_copy(y, pred, np.array([1, 1, 1, 0, 0, 0]))
    assert (a.with_copy, a.with_copy_correct, a.without_copy, a.without_copy_correct) == (3, 3, 3, 1)
    assert "100.0% of 3" in a.sentence() and "33.3% of 3" in a.sentence() and "within noise" not in a.sentence()
    assert "within noise" in accuracy_by_copy(y, np.array([0, 1, 0, 3, 0, 0]), np.array([1, 1, 1, 0, 0, 0])).sentence()


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
    from fer_lib.calibration import expected_calibration_error

    bins = reliability_bins(p, labels)
    ece = (bins["faces"] * (bins["accuracy"] - bins["confidence"]).abs()).sum() / n
    assert ece == pytest.approx(expected_calibration_error(p, labels))  # the diagram's bins are the ECE's


# --------------------------------------------------------------------------------------------- one set of numbers


def test_every_page_quotes_the_runs_recorded_accuracy():
    run = {"val_acc_by_tta": {"none": 0.671, "flip": 0.676, "flip+shift": 0.679}, "tta": "flip+shift",
           "val_faces": 2856, "best_val_acc": 0.6725, "best_val_acc_tta": 0.6781}
    a = run_accuracy(run)
    assert (a.plain, a.flip, a.views, a.with_views) == (0.671, 0.676, "flip+shift", 0.679)
    assert "67.1% on 2,856 validation faces, 67.9% with the face, its mirror image and four" in a.sentence()
    old = run_accuracy({"best_val_acc": 0.669, "best_val_acc_tta": 0.673, "val_faces": 2856})
    assert (old.plain, old.with_views, old.views) == (0.669, 0.673, "flip")
    assert run_accuracy({}) is None


def test_the_recipe_table_has_no_nan_and_no_test_set_claim():
    table = pd.DataFrame({"choice": ["input size", "test-time views"], "compared with": [np.nan, "AdamW"],
                          "result": ["68.1% vs 69.9% validation; the 96 px run scored lower on the hidden test",
                                     "68.2% with flip test-time augmentation"]})
    shown, dropped = recipe_table(table)
    assert dropped == 1 and shown.loc[0, "result"] == "68.1% vs 69.9% validation"
    assert shown.loc[1].tolist()[::2] == ["test-time views", "68.2% with flip test-time augmentation"], "kept"
    assert shown.loc[0, "compared with"] == "—" and not shown.isna().any().any()
    assert ">nan<" not in shown.to_html().lower()


# --------------------------------------------------------------------------------------------- figures on the page


def test_show_figure_embeds_alt_text_and_refuses_text_too_small_for_the_page(monkeypatch):
    import IPython.display
    import matplotlib.pyplot as plt

    from fer_lib.plots import PAGE_WIDTH_PX, show_figure

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append((obj, kw)))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([0, 1], [0, 1])
    show_figure(fig, 'A rising line from 0 to 1 "quoted"')
    bundle, kw = shown[0]
    assert 'alt="A rising line from 0 to 1 &quot;quoted&quot;"' in bundle["text/html"]
    assert (bundle["text/html"].startswith('<img src="data:image/png;base64,')
            and "max-width:100%" in bundle["text/html"])
    assert kw["metadata"]["image/png"]["alt"].startswith("A rising line") and bundle["image/png"]
    with pytest.raises(ValueError, match="alt text"):
        show_figure(plt.subplots()[0], " ")
    # 6 points on a figure 15 inches wide: shown at PAGE_WIDTH_PX the text would be about 5 px
    wide, ax = plt.subplots(figsize=(15, 3))
    ax.set_title("tiny", fontsize=6)
    with pytest.raises(ValueError, match="'tiny' would show at"):
        show_figure(wide, "a wide figure")
    assert PAGE_WIDTH_PX <= 960


def test_the_reports_figures_keep_their_text_readable():
    import io

    from PIL import Image

    from fer_lib.plots import figure_png, plot_confusion, plot_history, plot_reliability, smallest_text_px

    f = confusion_findings(*labels_from_matrix(TIE_MATRIX))
    h = history([0.4, 0.5, 0.55, 0.6])
    h["val_acc_raw"], h["train_eval_acc"] = [0.42, 0.49, 0.57, 0.58], [0.41, 0.52, 0.58, 0.66]
    c = calibration_findings(torch.randn(300, 7), np.random.default_rng(0).integers(0, 7, 300))
    for fig in (plot_confusion(f.counts, f.rates), plot_history(h),
                plot_reliability(c.before, c.after, c.ece_before, c.ece_after, c.temperature)):
        # the on-page size does not depend on the dpi (a PNG drawn at 40 dpi is just shown larger): cheap to test
        width = Image.open(io.BytesIO(figure_png(fig, dpi=40))).size[0]
        assert smallest_text_px(fig, width, dpi=40)[0] >= 9
