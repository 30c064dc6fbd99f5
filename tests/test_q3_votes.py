"""Q3: FER+ crowd votes beside the model's errors."""
from __future__ import annotations

import gzip

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from fer_lib.data.layouts import Dataset, FaceSet
from fer_lib.questions.q3_confusion import confusion_findings
from fer_lib.questions.q3_votes import VotesError, crowd_summary, load_votes, pair_evidence, read_votes, votes_file_for

AN, DI, FE, HA, SA, SU, NE = range(7)
VOTE_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
from tests.test_q3_confusion import TIE_MATRIX  # noqa: E402
from tests.test_stats import wilson_by_hand  # noqa: E402


def labels_from_matrix(matrix):
    y_true, y_pred = [], []
    for t, row in enumerate(matrix):
        for p, n in enumerate(row):
            y_true += [t] * n
            y_pred += [p] * n
    return np.array(y_true), np.array(y_pred)



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
    from fer_lib.questions.q3_votes import crowd_pairs_table

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
    from fer_lib.plots.q3_confusion import plot_recall_vs_frequency, plot_vote_gallery

    votes = np.tile(np.arange(10), (3, 1))
    fig = plot_vote_gallery(np.zeros((3, 48, 48), np.uint8), votes, ["a", "b", "c"], "Fear", "Sad", ncols=2)
    assert len(fig.axes) == 6
    findings = confusion_findings(*labels_from_matrix(TIE_MATRIX), train_labels=np.arange(7).repeat(10))
    r = findings.report
    assert plot_recall_vs_frequency(findings.train_share, r["recall"], r["recall_low"], r["recall_high"],
                                    findings.support) is not None


def test_crowd_evidence_uses_the_faces_ids_as_rows_and_is_optional(tmp_path):
    from fer_lib.questions.q3_votes import Votes, crowd_answer, crowd_evidence

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
    from fer_lib.plots.q3_confusion import plot_recall_vs_frequency

    findings = confusion_findings(np.array([HA, HA, SA, SA]), np.array([HA, HA, HA, HA]), train_labels=np.arange(7))
    r = findings.report
    assert plot_recall_vs_frequency(findings.train_share, r["recall"], r["recall_low"], r["recall_high"],
                                    findings.support) is not None


