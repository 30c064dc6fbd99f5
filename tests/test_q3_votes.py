"""Q3: FER+ crowd votes beside the model's errors."""
from __future__ import annotations

import gzip

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from fer_lib.data.layouts import Dataset, FaceSet
from fer_lib.questions.q3_confusion import confusion_findings
from fer_lib.questions.q3_votes import VotesError, crowd_evidence, load_votes, read_votes

AN, DI, FE, HA, SA, SU, NE = range(7)
VOTE_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
from tests.test_q3_confusion import TIE_MATRIX, labels_from_matrix  # noqa: E402
from tests.test_stats import wilson_by_hand  # noqa: E402

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
    votes = load_votes(dataset)
    assert votes[0].tolist() == [9, 0, 0, 0, 0, 0, 1, 0, 0, 0]  # Angry ... Neutral, contempt, unknown, NF
    assert votes[1].tolist() == [0, 0, 2, 0, 4, 3, 0, 0, 1, 0]


def test_no_votes_file_means_no_votes(tmp_path):
    assert load_votes(homework_dataset(tmp_path, 2)) is None


@pytest.mark.parametrize("rows, header, message", [
    (["1,0,0,0,9,0,0,0,0,0"] * 3, VOTE_HEADER, "3 rows of votes, but"),
    (["1,0,0,0,9,0,0,0,0,0", "1,0,x,0,9,0,0,0,0,0"], VOTE_HEADER, "line 3: column 'surprise' is 'x'"),
    (["1,0,0,0,9,0,0,0,0,0", "1,0,0,0,9"], VOTE_HEADER, "line 3: column 'disgust' is ''"),  # a short row
    (["1,0,0,0,9,0,0,0,0,0", "1,0,0,0,9,0,0,0,0,0,1"], VOTE_HEADER, "Expected 12 fields in line 3, saw 13"),
    (["1,0,0,0,9,0,0,0,0,0,1", "1,0,0,0,9,0,0,0,0,0"], VOTE_HEADER, "cannot read the votes file"),
    (["1,0,0,0,9,0,0,0,0,0", "", "1,0,0,0,9,0,0,0,0,0"], VOTE_HEADER, "line 3: blank line inside the file"),
    (["1,0,0,0,9,0,0,0,0"] * 2, VOTE_HEADER.replace(",NF", ""), "line 1: missing vote column(s) NF"),
])
def test_bad_votes_files_are_refused_naming_file_and_line(tmp_path, rows, header, message):
    path = tmp_path / "train_ferplus.csv"
    lines = [f"Training,fer{i:07d}.png,{r}\n" if r else "\n" for i, r in enumerate(rows)]  # "" is a blank line
    path.write_text(header + "\n" + "".join(lines))
    with pytest.raises(VotesError, match="train_ferplus.csv") as err:
        read_votes(path, expected_rows=2, train_file=tmp_path / "train.csv.gz")
    assert message in str(err.value)


def evidence(votes, y_true, y_pred, pairs=(("Fear", "Sad"),)):
    """crowd_evidence for faces whose ids are the rows 0..n-1 of ``votes``."""
    n = len(y_true)
    faces = FaceSet(np.zeros((n, 48, 48), np.uint8), np.asarray(y_true), np.arange(n))
    return crowd_evidence(np.asarray(votes), faces, y_pred, list(pairs))


def test_pair_evidence_counts_crowd_support_among_errors_and_correct_faces():
    # 4 Fear faces predicted Sad (3 with >= 3 Sad votes), 5 correct Fear faces (1 with >= 3 Sad votes)
    y_true = np.array([FE] * 9 + [HA])
    y_pred = np.array([SA] * 4 + [FE] * 5 + [HA])
    votes = np.zeros((10, 10), int)
    votes[:, SA] = [5, 3, 4, 1, 0, 0, 3, 1, 2, 0]
    votes[:, FE] = 10 - votes[:, SA]
    row = evidence(votes, y_true, y_pred).pair("Fear", "Sad")
    assert (row["errors"], row["correct"]) == (4, 5)
    assert row["errors_backed"] == pytest.approx(0.75) and row["correct_backed"] == pytest.approx(0.2)
    assert (row["errors_low"], row["errors_high"]) == pytest.approx(wilson_by_hand(3, 4))
    assert (row["correct_low"], row["correct_high"]) == pytest.approx(wilson_by_hand(1, 5))
    assert not row["clearly_more"]  # 3 of 4 against 1 of 5: within noise
    many = evidence(np.repeat(votes, 20, axis=0), np.repeat(y_true, 20), np.repeat(y_pred, 20)).pair("Fear", "Sad")
    assert many["clearly_more"]  # the same shares on 20 times the faces: 75% vs 20% beyond noise


def test_crowd_summary_on_known_votes():
    y_true = np.array([HA, HA, SA, FE])
    y_pred = np.array([HA, SA, SA, SA])
    votes = np.zeros((4, 10), int)
    votes[0, HA] = 10  # agrees, correct, not split
    votes[1, [HA, SA]] = [6, 4]  # agrees, wrong, crowd backs Sad
    votes[2, [SA, NE]] = [4, 6]  # plurality Neutral: disagrees with the label; correct but split (6 Neutral)
    votes[3, [FE, SA, 9]] = [3, 2, 5]  # agrees (Fear is the 7-class plurality); wrong, only 2 Sad votes
    crowd = evidence(votes, y_true, y_pred)
    s, table = crowd.summary, crowd.agreement
    assert table["faces"][["Happy", "Sad", "Fear"]].tolist() == [2, 1, 1]
    assert table.loc["Happy", "share"] == 1.0 and table.loc["Sad", "share"] == 0.0 and table.loc["Fear", "share"] == 1
    assert (table.loc["Sad", "low"], table.loc["Sad", "high"]) == pytest.approx(wilson_by_hand(0, 1))
    top = s.loc["label is the top class"]
    assert (top["faces"], top["share"]) == (4, 0.75)
    assert (top["low"], top["high"]) == pytest.approx(wilson_by_hand(3, 4))
    assert (s.loc["errors backed", "faces"], s.loc["errors backed", "share"]) == (2, 0.5)
    assert (s.loc["correct split", "faces"], s.loc["correct split", "share"]) == (2, 0.5)
    # a crowd majority (more than half of the annotators on one class) on faces 0 (Happy 10), 1 (Happy 6) and
    # 2 (Neutral 6), not on face 3 (Fear 3 of 10): the label is that majority on 2, the model's answer on 1
    label = s.loc["label is the majority"]
    assert label["faces"] == 3 and label["share"] == pytest.approx(2 / 3)
    model = s.loc["model is the majority"]
    assert model["share"] == pytest.approx(1 / 3)
    assert (model["low"], model["high"]) == pytest.approx(wilson_by_hand(1, 3))
    assert crowd.majority.tolist() == [HA, HA, NE, -1]
    # on those 3 faces the model's answer is the FER2013 label twice (faces 0 and 2), whatever the crowd says
    assert s.loc["model is the label", "faces"] == 3 and s.loc["model is the label", "share"] == pytest.approx(2 / 3)
    votes[1, [HA, SA]] = [5, 5]  # exactly half is not a majority
    crowd = evidence(votes, y_true, y_pred)
    assert crowd.summary.loc["model is the majority", "faces"] == 2 and crowd.majority[1] == -1


def test_vote_gallery_and_frequency_plot_draw():
    from fer_lib.plots.q3_confusion import plot_recall_vs_frequency, plot_vote_gallery

    votes = np.tile(np.arange(10), (3, 1))
    fig = plot_vote_gallery(np.zeros((3, 48, 48), np.uint8), votes, ["a", "b", "c"], "Fear", "Sad", ncols=2)
    assert len(fig.axes) == 6
    import io

    from PIL import Image

    from fer_lib.plots.show import MIN_TEXT_PX, figure_png, smallest_text_px

    fig = plot_vote_gallery(np.zeros((8, 48, 48), np.uint8), np.tile(np.arange(10), (8, 1)), ["#1"] * 8, "Fear", "Sad")
    width = Image.open(io.BytesIO(figure_png(fig, dpi=40))).size[0]
    assert smallest_text_px(fig, width, dpi=40)[0] >= MIN_TEXT_PX  # the vote-bar ticks included
    findings = confusion_findings(*labels_from_matrix(TIE_MATRIX), train_labels=np.arange(7).repeat(10))
    assert plot_recall_vs_frequency(findings) is not None


def test_crowd_evidence_uses_the_faces_ids_as_rows_and_is_optional(tmp_path):
    counts = np.zeros((6, 10), int)
    counts[:, NE] = 10
    counts[4, [FE, SA, NE]] = [5, 5, 0]  # row 4 is the one Fear face predicted Sad: the crowd backs Sad
    faces = FaceSet(np.zeros((2, 48, 48), np.uint8), np.array([FE, NE]), np.array([4, 1]))
    crowd = crowd_evidence(counts, faces, np.array([SA, NE]), [("Fear", "Sad")])
    assert crowd.votes.tolist() == counts[[4, 1]].tolist()
    assert (crowd.pair("Fear", "Sad")["errors"], crowd.pair("Fear", "Sad")["errors_backed"]) == (1, 1.0)
    assert crowd.summary.loc["model is the majority", "faces"] == 1  # row 1: Neutral 10
    assert crowd.summary.loc["model is the majority", "share"] == 1.0 and crowd.annotators == 10
    assert crowd_evidence(None, faces, np.array([SA, NE]), [("Fear", "Sad")]) is None


def test_frequency_plot_survives_recalls_of_0_and_100_percent():
    from fer_lib.plots.q3_confusion import plot_recall_vs_frequency

    findings = confusion_findings(np.array([HA, HA, SA, SA]), np.array([HA, HA, HA, HA]), train_labels=np.arange(7))
    assert plot_recall_vs_frequency(findings) is not None


