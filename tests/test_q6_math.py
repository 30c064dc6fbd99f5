"""Q6: the closed forms agree with PyTorch, the checks catch a wrong formula, the shape formula reproduces every
convolution of the model; math renders offline."""
from __future__ import annotations

import pytest
import torch

import fer_lib.questions.q6_math as mathcheck
from fer_lib.report.mathrender import offline_math


def test_closed_forms_agree_with_pytorch():
    for check in (mathcheck.verify_conv_shapes(300), mathcheck.verify_batchnorm(100),
                  mathcheck.verify_softmax_cross_entropy(100)):
        assert check.passed and check.max_error <= check.tolerance, (check.name, check.max_error)
        assert check.cases >= 100


def test_conv_formula_by_hand():
    # the seed's stem: 7x7, stride 2, padding 3 on 48x48 -> 24x24; an uneven stride drops the last window
    assert mathcheck.conv2d_output_shape(8, 48, 48, 64, (7, 7), (2, 2), (3, 3)) == (8, 24, 24, 64)
    assert mathcheck.conv2d_output_shape(1, 10, 9, 3, (3, 2), (3, 2), (0, 1)) == (1, 3, 5, 3)


def test_a_wrong_shape_formula_is_caught(monkeypatch):
    from fer_lib.model.network import build_model

    def without_floor(batch, width, height, out_channels, kernel, stride, padding):
        return batch, round((width + 2 * padding[0] - kernel[0]) / stride[0] + 1), \
            round((height + 2 * padding[1] - kernel[1]) / stride[1] + 1), out_channels

    monkeypatch.setattr(mathcheck, "conv2d_output_shape", without_floor)
    check = mathcheck.verify_conv_shapes(300)
    assert not check.passed and check.max_error > 0
    with pytest.raises(AssertionError):  # the page fails loudly
        mathcheck.math_answer(build_model("random")[0], 48)


def test_a_wrong_batchnorm_gradient_is_caught(monkeypatch):
    right = mathcheck.batchnorm_gradients

    def forgets_variance_path(x, gamma, dl_dy, eps=1e-5):
        grads = right(x, gamma, dl_dy, eps)
        inv_std = 1 / torch.sqrt(x.var(0, unbiased=False) + eps)
        grads["x"] = dl_dy * gamma * inv_std  # the common mistake: only the direct path
        return grads

    monkeypatch.setattr(mathcheck, "batchnorm_gradients", forgets_variance_path)
    assert not mathcheck.verify_batchnorm(20).passed


def test_a_wrong_one_line_batchnorm_gradient_is_caught(monkeypatch):
    right = mathcheck.batchnorm_gradients

    def drops_the_gamma_term(x, gamma, dl_dy, eps=1e-5):
        grads = right(x, gamma, dl_dy, eps)
        grads["x_compact"] = grads["x"] + 1e-6 * dl_dy  # off by a little
        return grads

    monkeypatch.setattr(mathcheck, "batchnorm_gradients", drops_the_gamma_term)
    assert not mathcheck.verify_batchnorm(5).passed


def test_a_wrong_softmax_gradient_is_caught(monkeypatch):
    monkeypatch.setattr(mathcheck, "softmax_cross_entropy_gradient",
                        lambda z, t: torch.nn.functional.one_hot(t, z.shape[1]).to(z.dtype) - torch.softmax(z, 1))
    assert not mathcheck.verify_softmax_cross_entropy(20).passed


def test_offline_math_converts_latex_to_mathml():
    page = ('<html><head></head><body>'
            '<p>inline $\\hat{y}_t - y_t$ and</p><p>$$\\frac{a}{b}$$</p><pre>cost: $5 and $6</pre></body></html>')
    out = offline_math(page)
    assert out.count("<math") == 2 and 'display="block"' in out
    assert "<pre>cost: $5 and $6</pre>" in out  # code blocks are left alone


@pytest.mark.parametrize("size, sides", [(72, [36, 18, 9, 5, 3]), (48, [24, 12, 6, 3, 2])])
def test_the_formula_reproduces_every_convolution_of_the_model(size, sides):
    from fer_lib.model.network import build_model

    table = mathcheck.conv_shape_table(build_model("random")[0], size)
    assert len(table) == 21 and (table["type"] == "Conv2d").sum() == 20  # 20 convolutions and the max-pool
    assert table["matches"].all() and (table["formula side"] == table["traced side"]).all()
    by_layer = table.set_index("layer")
    # worked by hand: stem floor((72 + 6 - 7) / 2) + 1 = 36, max-pool 18, then the stride-2 blocks 9, 5, 3
    assert [by_layer.loc[n, "formula side"] for n in ("conv1", "maxpool", "layer2.0.conv1", "layer3.0.conv1",
                                                       "layer4.0.conv1")] == sides
    stem = by_layer.loc["conv1"]
    assert (stem["input side"], stem["kernel"], stem["stride"], stem["padding"], stem["channels"]) \
        == (size, 7, 2, 3, 64)
    down = by_layer.loc["layer2.0.downsample.0"]
    assert (down["input side"], down["kernel"], down["stride"], down["padding"], down["channels"],
            down["formula side"]) == (sides[1], 1, 2, 0, 128, sides[2])


def test_a_wrong_formula_shows_in_the_model_table(monkeypatch):
    from fer_lib.model.network import build_model

    monkeypatch.setattr(mathcheck, "conv2d_output_shape",
                        lambda b, w, h, c, k, s, p: (b, -(-(w + 2 * p[0] - k[0]) // s[0]) + 1, h, c))  # ceil
    table = mathcheck.conv_shape_table(build_model("random")[0], 72)
    assert not table["matches"].all()
    # only where the stride leaves a remainder: (72 + 6 - 7) / 2, (36 + 2 - 3) / 2, (18 + 2 - 3) / 2, (18 - 1) / 2
    assert set(table.loc[~table["matches"], "layer"]) == {"conv1", "maxpool", "layer2.0.conv1", "layer2.0.downsample.0"}


def test_math_answer_gathers_the_checks_and_fails_loudly(monkeypatch):
    from fer_lib.model.network import build_model

    model = build_model("random")[0]
    q6 = mathcheck.math_answer(model, 48)
    assert list(q6.checks["random cases"]) == [300, 200, 200]
    assert (q6.checks["largest difference"] <= q6.checks["tolerance"]).all()
    assert q6.shapes["formula"].iloc[0] == "\u230a(48 + 2\u00b73 \u2212 7) / 2\u230b + 1 = 24"
    monkeypatch.setattr(mathcheck, "conv2d_output_shape", lambda b, w, h, c, k, s, p: (b, w, h, c))  # no shrinking
    with pytest.raises(AssertionError, match="disagrees with the model"):
        mathcheck.math_answer(model, 48)
