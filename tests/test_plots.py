"""Figures on the page: alt text and a floor on text size."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from fer_lib.questions.q3_confusion import calibration_findings, confusion_findings
from tests.test_q2_history import history  # noqa: E402
from tests.test_q3_confusion import TIE_MATRIX, labels_from_matrix  # noqa: E402

# --------------------------------------------------------------------------------------------- figures on the page


def test_show_figure_embeds_alt_text_and_refuses_text_too_small_for_the_page(monkeypatch):
    import IPython.display
    import matplotlib.pyplot as plt

    from fer_lib.plots.show import PAGE_WIDTH_PX, show_figure

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

    from fer_lib.plots.q2_history import plot_history
    from fer_lib.plots.q3_confusion import plot_confusion, plot_reliability
    from fer_lib.plots.show import figure_png, smallest_text_px

    f = confusion_findings(*labels_from_matrix(TIE_MATRIX))
    h = history([0.4, 0.5, 0.55, 0.6])
    h["val_acc_raw"], h["train_eval_acc"] = [0.42, 0.49, 0.57, 0.58], [0.41, 0.52, 0.58, 0.66]
    c = calibration_findings(torch.randn(300, 7), np.random.default_rng(0).integers(0, 7, 300))
    for fig in (plot_confusion(f.counts, f.rates), plot_history(h, "history", kept_epoch=4, kept_train_loss=0.5),
                plot_reliability(c.before, c.after, c.ece_before, c.ece_after, c.temperature)):
        # the on-page size does not depend on the dpi (a PNG drawn at 40 dpi is just shown larger): cheap to test
        width = Image.open(io.BytesIO(figure_png(fig, dpi=40))).size[0]
        assert smallest_text_px(fig, width, dpi=40)[0] >= 9


def test_one_interval_formatter_for_every_page():
    from fer_lib.plots.show import interval

    assert interval(0.6449, 0.6851) == "64–69%"
    assert interval(0.64, 0.69, value=0.663) == "66% (64–69%)"
    assert interval(0.0103, 0.0291, signed=True, digits=1) == "+1.0 to +2.9 points"
    assert interval(-0.004, 0.012, signed=True, digits=1) == "-0.4 to +1.2 points"
