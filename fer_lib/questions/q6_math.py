"""Q6's closed forms (convolution shape, batch-norm gradients, softmax + cross-entropy gradient), each compared
with PyTorch on many random cases (``verify_*``); ``math_answer``, the page's one call, raises if one disagrees."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fer_lib.questions.q1_model import layer_shapes


@dataclass
class Check:
    name: str
    cases: int
    max_error: float  # largest absolute difference (shapes: number of mismatching cases)
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance


def conv2d_output_shape(batch: int, width: int, height: int, out_channels: int, kernel: tuple[int, int],
                        stride: tuple[int, int], padding: tuple[int, int]) -> tuple[int, int, int, int]:
    """(B, W', H', C_out) for a (B, W, H, C_in) batch, p1 padding left and right, p2 top and bottom: the kernel's
    first position plus one more for every full stride that still fits inside the padded input."""
    (k1, k2), (s1, s2), (p1, p2) = kernel, stride, padding
    return batch, (width + 2 * p1 - k1) // s1 + 1, (height + 2 * p2 - k2) // s2 + 1, out_channels


def verify_conv_shapes(cases: int = 300, seed: int = 0) -> Check:
    """The formula against nn.Conv2d on random sizes, asymmetric kernels, strides and paddings."""
    draw = np.random.default_rng(seed).integers
    mismatches = 0
    for _ in range(cases):
        b, c_in, c_out, k, s = draw(1, 4), draw(1, 5), draw(1, 6), tuple(draw(1, 8, 2)), tuple(draw(1, 5, 2))
        p = (draw(0, k[0] // 2 + 1), draw(0, k[1] // 2 + 1))  # PyTorch allows padding up to half the kernel
        w, h = draw(k[0], 41), draw(k[1], 41)
        # PyTorch is channels-first: (B, C, W, H) with the first spatial axis paired with k1, s1, p1
        out = torch.nn.Conv2d(c_in, c_out, k, s, p, bias=False)(torch.zeros(b, c_in, w, h))
        mismatches += (out.shape[0], out.shape[2], out.shape[3], out.shape[1]) != conv2d_output_shape(b, w, h, c_out,
                                                                                                     k, s, p)
    return Check("convolution output shape", cases, float(mismatches), 0.0)


def conv_shape_table(model: torch.nn.Module, input_size: int) -> pd.DataFrame:
    """The formula worked on every convolution of ``model`` and its max-pool (same formula) for one face at
    ``input_size``, in the order the data flows, beside the side Q1's trace gives (sides: all is square here)."""
    shapes = layer_shapes(model, input_size)
    rows = []
    for row in shapes[shapes["type"].isin(["Conv2d", "MaxPool2d"])].itertuples():
        side, k, s, p = row.input[-1], row.kernel, row.stride, row.padding
        _, out, _, _ = conv2d_output_shape(1, side, side, row.output[0], (k, k), (s, s), (p, p))
        rows.append({"layer": row.layer, "type": row.type, "input side": side, "kernel": k, "stride": s,
                     "padding": p, "channels": row.output[0], "formula side": out,
                     "formula": f"\u230a({side} + 2\u00b7{p} \u2212 {k}) / {s}\u230b + 1 = {out}",
                     "traced side": row.output[-1], "matches": out == row.output[-1]})
    return pd.DataFrame(rows)


def batchnorm_forward(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5):
    """y and the intermediates for an (m, features) mini-batch; the variance is the biased 1/m one."""
    mu = x.mean(0)
    var = ((x - mu) ** 2).mean(0)
    x_hat = (x - mu) / torch.sqrt(var + eps)
    return gamma * x_hat + beta, {"mu": mu, "var": var, "x_hat": x_hat}


def batchnorm_gradients(x: torch.Tensor, gamma: torch.Tensor, dl_dy: torch.Tensor, eps: float = 1e-5) -> dict:
    """The closed forms derived in notebook 06, from dl/dy_i alone (dl/dx twice: step by step and collected)."""
    m, (_, t) = x.shape[0], batchnorm_forward(x, gamma, 0, eps)
    mu, x_hat, inv_std = t["mu"], t["x_hat"], 1 / torch.sqrt(t["var"] + eps)
    dl_dxhat = dl_dy * gamma
    dl_dvar = (dl_dxhat * (x - mu)).sum(0) * -0.5 * inv_std ** 3
    dl_dmu = -(dl_dxhat * inv_std).sum(0) + dl_dvar * (-2 * (x - mu)).mean(0)  # second term is exactly 0
    dl_dx = dl_dxhat * inv_std + dl_dvar * 2 * (x - mu) / m + dl_dmu / m
    # the same, collected into one line: gamma / (m sigma) (m dl/dy_i - sum_j dl/dy_j - x_hat_i sum_j dl/dy_j x_hat_j)
    compact = gamma * inv_std / m * (m * dl_dy - dl_dy.sum(0) - x_hat * (dl_dy * x_hat).sum(0))
    return {"x_hat": dl_dxhat, "var": dl_dvar, "mu": dl_dmu, "x": dl_dx, "x_compact": compact,
            "gamma": (dl_dy * x_hat).sum(0), "beta": dl_dy.sum(0)}


def verify_batchnorm(cases: int = 200, seed: int = 0, tolerance: float = 1e-10) -> Check:
    """Every batch-norm gradient against autograd in float64, and dx, dgamma, dbeta against F.batch_norm."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(cases):
        m, f = int(torch.randint(2, 33, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        scale = float(torch.rand(1, generator=g)) * 5 + 0.1
        # the loss is l = sum(r * y), so dl/dy = r
        x, gamma, beta, r = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((m, f), (f,), (f,), (m, f)))
        x, gamma, beta = (x * scale).requires_grad_(), gamma.requires_grad_(), beta.requires_grad_()
        y, inter = batchnorm_forward(x, gamma, beta)
        for t in inter.values():
            t.retain_grad()
        (r * y).sum().backward()
        closed = batchnorm_gradients(x.detach(), gamma.detach(), r)
        # autograd's dl/dmu counts only paths through mu, as the derivation does
        auto = {**{k: t.grad for k, t in inter.items()}, "x": x.grad, "x_compact": x.grad, "gamma": gamma.grad,
                "beta": beta.grad}
        # and PyTorch's own batch norm layer (training mode) gives the same dx, dgamma, dbeta
        x2, g2, b2 = (t.detach().clone().requires_grad_() for t in (x, gamma, beta))
        (r * F.batch_norm(x2, None, None, g2, b2, training=True, eps=1e-5)).sum().backward()
        layer = {"x": x2.grad, "gamma": g2.grad, "beta": b2.grad}
        worst = max(worst, *((closed[k] - v).abs().max().item() for grads in (auto, layer) for k, v in grads.items()))
    return Check("batch-norm gradients", cases, worst, tolerance)


def softmax_cross_entropy_gradient(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """dL/dz = softmax(z) - onehot(target), for logits z (N, K) and class indices (N,)."""
    return torch.softmax(z, dim=1) - F.one_hot(target, z.shape[1]).to(z.dtype)


def verify_softmax_cross_entropy(cases: int = 200, seed: int = 0, tolerance: float = 1e-12) -> Check:
    """The closed form against autograd through F.cross_entropy, in float64, on random logits and targets."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(cases):
        n, k = int(torch.randint(1, 17, (1,), generator=g)), int(torch.randint(2, 11, (1,), generator=g))
        z = (torch.randn(n, k, generator=g, dtype=torch.float64) * 4).requires_grad_()
        target = torch.randint(0, k, (n,), generator=g)
        F.cross_entropy(z, target, reduction="sum").backward()
        worst = max(worst, (softmax_cross_entropy_gradient(z.detach(), target) - z.grad).abs().max().item())
    return Check("softmax + cross-entropy gradient", cases, worst, tolerance)


@dataclass
class MathAnswer:
    """Q6's page: the three checks (each passed, or the call raised) and the formula on every convolution."""
    conv: Check
    batchnorm: Check
    softmax: Check
    shapes: pd.DataFrame  # conv_shape_table, every row matching
    checks: pd.DataFrame  # a row per check: closed form, random cases, largest difference, tolerance


def math_answer(model: torch.nn.Module, input_size: int) -> MathAnswer:
    """Q6's one call: every closed form checked against PyTorch (AssertionError when one disagrees)."""
    shapes = conv_shape_table(model, input_size)
    if not shapes["matches"].all():
        raise AssertionError("the shape formula disagrees with the model:\n" + shapes[~shapes["matches"]].to_string())
    checks = (verify_conv_shapes(300), verify_batchnorm(200), verify_softmax_cross_entropy(200))
    if not all(c.passed for c in checks):
        raise AssertionError("a closed form disagrees with PyTorch: " + "; ".join(map(str, checks)))
    table = pd.DataFrame(checks).set_axis(["closed form", "random cases", "largest difference", "tolerance"], axis=1)
    return MathAnswer(*checks, shapes, table)
