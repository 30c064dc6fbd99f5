"""Q2: the training history findings, the accuracy figures every page quotes, copies across the split."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from fer_lib.data.layouts import FaceSet
from fer_lib.questions.appendix import recipe_table
from fer_lib.questions.q2_history import history_findings, history_table, run_accuracy, split_copies
from fer_lib.questions.q3_confusion import accuracy_by_copy

AN, DI, FE, HA, SA, SU, NE = range(7)
VOTE_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def labels_from_matrix(matrix):
    y_true, y_pred = [], []
    for t, row in enumerate(matrix):
        for p, n in enumerate(row):
            y_true += [t] * n
            y_pred += [p] * n
    return np.array(y_true), np.array(y_pred)



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
    from fer_lib.plots.q2_history import plot_history

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
    from fer_lib.data.layouts import train_val_split

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


