"""Q2: the training history findings, the accuracy figures every page quotes, copies across the split."""
from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from fer_lib.data.layouts import FaceSet
from fer_lib.questions.q2_history import (
    history_answer,
    history_findings,
    history_table,
    run_accuracy,
    split_copies,
)

# --------------------------------------------------------------------------------------------- Q2


def history(val_acc, train_acc=None, val_loss=None):
    """A history as runs write it; ``train_acc``: the training faces scored like validation (train_eval_acc)."""
    n = len(val_acc)
    val_acc = np.asarray(val_acc, dtype=float)
    return pd.DataFrame({"epoch": np.arange(1, n + 1), "train_loss": np.linspace(2.0, 1.0, n) + 0.3,
                         "train_ce": np.linspace(2.0, 1.0, n), "train_acc": val_acc - 0.05,
                         "val_loss": np.asarray(val_loss if val_loss is not None else 2.2 - val_acc * 2, dtype=float),
                         "val_acc": val_acc, "val_acc_tta": val_acc + 0.01,
                         "train_eval_acc": np.asarray(train_acc if train_acc is not None else val_acc + 0.02, float),
                         "lr": 1e-3, "seconds": 1.0})


N_VAL = 2856  # SE at p = 0.6: 0.92 points


def findings(h, n_val=N_VAL, train_faces=1000, kept_epoch=None, **rules):
    """history_findings with the final epoch kept (as runs keep it) unless told otherwise."""
    return history_findings(h, n_val, train_faces, kept_epoch or int(h["epoch"].iloc[-1]), **rules)


def test_history_still_improving():
    f = findings(history([0.40, 0.50, 0.55, 0.58, 0.60, 0.62, 0.64, 0.66, 0.68, 0.70]), N_VAL)
    assert f.window == 2 and f.trend == "improving"
    assert f.recent_best == pytest.approx(0.70) and f.earlier_best == pytest.approx(0.66)
    assert f.verdict == "fits well" and f.rise_epochs == 0 and not f.loss_rising


def test_history_levelled_off_within_one_standard_error():
    acc = [0.40, 0.50, 0.55, 0.58, 0.60, 0.62, 0.630, 0.634, 0.636, 0.635]
    f = findings(history(acc), N_VAL)
    assert f.val_se == pytest.approx(math.sqrt(0.635 * 0.365 / N_VAL))  # the kept (final) epoch's
    assert f.trend == "flat" and f.best_epoch == 9
    # with a huge validation set the same rise (0.4 points) is a real gain
    assert findings(history(acc), 10**7).trend == "improving"


def test_rising_loss_counts_the_final_consecutive_rises():
    def rise(loss):
        return findings(history([0.5] * len(loss), val_loss=loss)).rise_epochs

    assert rise([3, 2, 1]) == 0 and rise([1.0]) == 0
    assert rise([1, 2, 3]) == 2 and rise([1, 3, 2, 3, 4]) == 2 and rise([2, 1, 1, 1.1]) == 1


def test_history_overfitting_that_costs_accuracy():
    acc = [0.40, 0.50, 0.58, 0.62, 0.62, 0.61, 0.60, 0.59, 0.58, 0.57]
    train = [0.40, 0.52, 0.62, 0.70, 0.75, 0.80, 0.84, 0.87, 0.90, 0.92]
    loss = [1.8, 1.4, 1.2, 1.1, 1.12, 1.18, 1.25, 1.30, 1.36, 1.42]
    f = findings(history(acc, train, loss), N_VAL)
    assert f.verdict == "overfits" and f.trend == "declining" and f.costs_accuracy
    assert (f.rise_epochs, f.rise_from_epoch, f.val_loss_min_epoch) == (6, 4, 4)
    assert f.final_val_loss == pytest.approx(1.42)
    assert f.final_val_acc - f.rise_acc_start == pytest.approx(-0.05)
    assert f.final_train_acc - f.final_val_acc == pytest.approx(0.35)


def shipped_like(n=60, rise=10):
    """The shape of the shipped run: loss falls, then rises each of the last ``rise`` epochs by about 3% in all
    while accuracy slips 0.7 points (under one standard error) and a one-cycle rate anneals to zero."""
    acc = np.r_[np.linspace(0.2, 0.671, n - rise), np.linspace(0.6705, 0.663, rise)]
    loss = np.r_[np.linspace(1.9, 0.917, n - rise), np.linspace(0.9205, 0.948, rise)]
    h = history(acc, val_loss=loss)
    h["train_eval_acc"] = acc + np.linspace(0.0, 0.19, n)
    h["lr"] = one_cycle(n)
    return h


def test_a_steady_late_rise_of_validation_loss_is_mild_overfitting_not_noise():
    # the rise is 3.4% of the loss, under the old "5% is noise" rule; ten rises in a row are a signal
    f = findings(shipped_like(), N_VAL, kept_epoch=60)
    assert (f.rise_epochs, f.rise_from_epoch) == (10, 50) and f.loss_rising
    assert f.rise_acc_start == pytest.approx(0.671) and f.final_val_acc == pytest.approx(0.663)
    assert -f.val_se < (f.final_val_acc - f.rise_acc_start) < 0  # the accuracy slip alone is within one standard error
    assert f.verdict == "overfits" and not f.costs_accuracy
    assert f.gap_low < f.gap_at_kept < f.gap_high and f.gap_low > 0.1
    # a shorter run of rises than min_rise is not counted; a bigger slip costs accuracy
    assert not findings(shipped_like(rise=2), N_VAL).loss_rising
    h = shipped_like()
    h.loc[h.index[-1], "val_acc"] = 0.65
    assert findings(h, N_VAL, kept_epoch=60).costs_accuracy


def test_history_underfitting_quick_run():
    # the shape of the 3-epoch quick run: training accuracy below validation, both low
    f = findings(history([0.224, 0.378, 0.383], [0.240, 0.293, 0.353], [1.88, 1.61, 1.57]), N_VAL)
    assert f.verdict == "underfits" and f.window == 1 and f.trend == "flat" and f.rise_epochs == 0


def test_training_loss_scored_like_validation_is_used_when_recorded():
    h = history([0.40, 0.50, 0.55, 0.60])
    f = findings(h, N_VAL)
    assert not f.like_for_like_loss and f.final_train_loss == pytest.approx(1.0)  # the augmented batches' train_ce
    h["train_eval_loss"] = [1.7, 1.3, 1.1, 0.9]
    f = findings(h, N_VAL)
    assert f.like_for_like_loss and f.final_train_loss == pytest.approx(0.9)
    assert "training cross-entropy (like validation)" in history_table(h).columns


def test_one_epoch_is_too_short_to_tell():
    f = findings(history([0.3]), N_VAL)
    assert f.trend == "too_short" and f.earlier_best is None and f.window == 0 and f.rise_epochs == 0


# --------------------------------------------------------------------------------------------- Q2, like for like


def one_cycle(n, peak=0.05):
    """A one-cycle-like schedule: warm-up to the peak at 30% of the run, then a cosine down to near zero."""
    up = max(1, int(0.3 * n))
    return np.r_[np.linspace(peak / 25, peak, up), peak / 2 * (1 + np.cos(np.linspace(0, np.pi, n - up)))] + 1e-6


def test_overfitting_is_judged_on_training_faces_scored_like_validation():
    acc = [0.40, 0.50, 0.56, 0.60, 0.62, 0.63, 0.64, 0.645, 0.648, 0.65]
    # the augmented batches (train_acc) score below validation; only the clean view counts
    h = history(acc, train_acc=np.asarray(acc) + 0.03)
    h["train_acc"] = np.asarray(acc) - 0.03
    f = findings(h, N_VAL)
    assert f.verdict == "fits well" and f.gap_at_kept < 0.1
    h["train_eval_acc"] = np.asarray(acc) + np.linspace(0.01, 0.22, len(acc))  # the clean view: 22 points above
    f = findings(h, N_VAL, train_faces=1000)
    assert f.verdict == "overfits"
    assert f.gap_at_kept == pytest.approx(0.22) and f.train_faces == 1000
    # the gap's standard error combines both samples: 1,000 training faces and the validation faces
    se = math.sqrt(0.87 * 0.13 / 1000 + 0.65 * 0.35 / N_VAL)
    assert (f.gap_low, f.gap_high) == (pytest.approx(0.22 - 1.959964 * se), pytest.approx(0.22 + 1.959964 * se))
    assert not f.loss_rising and not f.costs_accuracy  # no decline, no rising loss


def test_a_late_rise_while_the_rate_anneals_is_not_evidence_for_more_epochs():
    acc = [0.40, 0.50, 0.55, 0.58, 0.60, 0.61, 0.62, 0.62, 0.625, 0.63, 0.64, 0.655, 0.67, 0.68, 0.685]
    h = history(acc)
    h["lr"] = one_cycle(len(acc))
    f = findings(h, N_VAL)
    assert f.trend == "annealing_rise" and f.window == 3
    assert f.lr_end < 0.25 * f.lr_peak
    # the same rise at a constant rate is still improvement
    assert findings(history(acc), N_VAL).trend == "improving"


def test_the_kept_epoch_is_judged_and_a_higher_earlier_peak_is_found():
    acc = [0.40, 0.50, 0.62, 0.60, 0.61]
    h = history(acc)
    h["val_acc_tta"] = [0.41, 0.51, 0.615, 0.62, 0.63]
    h["train_eval_acc"] = [0.41, 0.52, 0.64, 0.70, 0.75]
    f = findings(h, N_VAL, train_faces=1000, kept_epoch=5)
    assert (f.kept_epoch, f.best_epoch) == (5, 3)
    assert f.kept_val_acc == pytest.approx(0.61) and f.gap_at_kept == pytest.approx(0.14)
    assert f.best_val_acc == pytest.approx(0.62) and f.top_tta_epoch == 5  # the kept epoch is the flip maximum
    h.loc[3, "val_acc_tta"] = 0.64
    f = findings(h, N_VAL, train_faces=1000, kept_epoch=5)
    assert (f.top_tta_epoch, f.top_tta) == (4, pytest.approx(0.64))
    with pytest.raises(ValueError, match="kept epoch 9"):
        findings(h, N_VAL, kept_epoch=9)


def test_the_averaged_and_the_stepped_weights_are_both_reported():
    acc = [0.40, 0.50, 0.55, 0.60]
    h = history(acc)
    h["val_acc_raw"] = [0.42, 0.49, 0.57, 0.58]
    f = findings(h, N_VAL)
    assert f.averaged and f.raw_at_kept == pytest.approx(0.58) and f.raw_best == pytest.approx(0.58)
    h["val_acc_raw"] = h["val_acc"]  # identical curves: no average was kept
    assert not findings(h, N_VAL).averaged
    table = history_table(h)
    assert "validation accuracy, stepped weights" in table.columns and "seconds" not in table.columns
    assert len(table) == 4 and "training cross-entropy (augmented)" in table.columns


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
    from types import SimpleNamespace

    from fer_lib.data.layouts import train_val_split

    faces, group = faces_with_copies()
    dataset = SimpleNamespace(train=faces, test=None)
    grouped = train_val_split(faces, 0.2, 3, groups=group)  # a run's grouped split
    c = split_copies(dataset, grouped, val_fraction=0.2, seed=3)
    train, val = train_val_split(faces, 0.2, 3)  # the random split, recounted by hand
    by_hand = sum(int(any(group[j] == group[i] for j in train.ids)) for i in val.ids)
    assert c.random_exact == c.random_near == by_hand > 0 and c.val_faces_random == len(val)
    assert c.exact == c.near == 0 and c.val_faces == len(grouped[1])  # grouping keeps each copy with its original
    assert c.random_share == pytest.approx(by_hand / len(val)) and c.test_faces == 0
    # the run's own split counted the same way: the random one, passed as the run's, has the random count
    assert split_copies(dataset, (train, val), val_fraction=0.2, seed=3).near == by_hand


# --------------------------------------------------------------------------------------------- one set of numbers


def test_every_page_quotes_the_runs_recorded_accuracy():
    run = {"val_acc_by_tta": {"none": 0.671, "flip": 0.676, "flip+shift": 0.679}, "tta": "flip+shift",
           "val_faces": 2856}
    a = run_accuracy(run)
    assert (a.plain, a.views, a.with_views, a.faces) == (0.671, "flip+shift", 0.679, 2856)
    assert a.views_picked_on_validation and a.by_views["flip"] == 0.676
    assert a.plain_low < 0.671 < a.plain_high and a.plain_high - a.plain_low == pytest.approx(0.034, abs=2e-3)
    plain = run_accuracy({**run, "tta": "none"})
    assert plain.with_views == 0.671 and not plain.views_picked_on_validation


def fake_run(tmp_path, train_eval=True):
    """A finished run's folder as the pages read it, and a context around it (the shipped run's shape)."""
    from types import SimpleNamespace

    from fer_lib.data.layouts import train_val_split

    h = shipped_like()
    h.to_csv(tmp_path / "history.csv", index=False)
    run = {"val_acc_by_tta": {"none": 0.663, "flip": 0.682}, "tta": "flip", "val_faces": 80, "selected_epoch": 60}
    if train_eval:
        run["train_eval"] = {"acc": 0.857, "loss": 0.476, "faces": 300}
    (tmp_path / "run.json").write_text(json.dumps(run))
    faces, group = faces_with_copies()
    split = train_val_split(faces, 0.2, 3, groups=group)
    return SimpleNamespace(run_dir=tmp_path, dataset=SimpleNamespace(train=faces, test=None), split=split,
                           val=split[1], config=SimpleNamespace(val_fraction=0.2, seed=3, split="grouped"))


def test_the_q2_page_reads_everything_from_the_finished_run(tmp_path, monkeypatch):
    monkeypatch.setattr("fer_lib.core.io.default_cache_dir", lambda: None)
    ctx = fake_run(tmp_path)
    q = history_answer(ctx)
    h = pd.read_csv(tmp_path / "history.csv")
    assert (q.train_eval.acc, q.train_eval.loss, q.train_eval.faces) == (0.857, 0.476, 300)
    assert q.findings.kept_epoch == 60 and q.findings.train_faces == 300 and q.findings.n_val == len(ctx.val)
    assert q.findings.train_acc_at_kept == pytest.approx(h["train_eval_acc"].iloc[-1])
    assert (q.accuracy.plain, q.accuracy.with_views) == (0.663, 0.682) and q.copies.near == 0
    assert len(q.table) == 60 and "training accuracy (like validation)" in q.table.columns
    assert history_answer(fake_run(tmp_path, train_eval=False)).train_eval is None


def test_the_figure_marks_the_runs_one_like_for_like_training_loss():
    from fer_lib.plots.q2_history import plot_history

    def diamonds(fig):
        return [line for line in fig.axes[0].lines if len(line.get_xdata()) == 1]

    fig = plot_history(history([0.3, 0.4, 0.45]), "t", kept_epoch=3, kept_train_loss=0.476)
    (point,) = diamonds(fig)
    assert point.get_ydata()[0] == 0.476 and "one point" in point.get_label()
    h = history([0.3, 0.4, 0.45])
    h["train_eval_loss"] = [1.5, 1.2, 1.0]  # recorded every epoch: a curve, no lone point
    assert not diamonds(plot_history(h, "t", kept_epoch=3, kept_train_loss=0.476))
