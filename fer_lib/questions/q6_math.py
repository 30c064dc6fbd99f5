"""Q6's closed forms (convolution shape, batch-norm gradients, softmax + cross-entropy gradient) and their checks.

Each ``verify_*`` compares a closed form with PyTorch on many random cases and returns a
:class:`Check`; ``Check.require()`` raises when any case disagrees, so a notebook cell fails loudly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Check:
    name: str
    cases: int
    max_error: float  # largest absolute difference (shapes: number of mismatching cases)
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance

    def require(self) -> "Check":
        if not self.passed:
            raise AssertionError(f"{self.name}: max error {self.max_error:.3g} over {self.cases} cases exceeds "
                                 f"{self.tolerance:.3g}")
        return self

    def __str__(self) -> str:
        status = "OK" if self.passed else "FAILED"
        return (f"{status}: {self.name}: {self.cases} random cases, largest error {self.max_error:.2e} "
                f"(tolerance {self.tolerance:.0e})")


# ---------------------------------------------------------------------------------------------- convolution


def conv2d_output_shape(batch: int, width: int, height: int, out_channels: int, kernel: tuple[int, int],
                        stride: tuple[int, int], padding: tuple[int, int]) -> tuple[int, int, int, int]:
    """(B, W', H', C_out) for a (B, W, H, C_in) batch; p1 pads left and right, p2 top and bottom.

    W' = floor((W + 2 p1 - k1) / s1) + 1 and H' = floor((H + 2 p2 - k2) / s2) + 1: the kernel's first
    position plus one more for every full stride that still fits inside the padded input.
    """
    (k1, k2), (s1, s2), (p1, p2) = kernel, stride, padding
    return batch, (width + 2 * p1 - k1) // s1 + 1, (height + 2 * p2 - k2) // s2 + 1, out_channels


def verify_conv_shapes(cases: int = 300, seed: int = 0) -> Check:
    """The formula against nn.Conv2d on random sizes, asymmetric kernels, strides and paddings."""
    g = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=g))

    mismatches = 0
    for _ in range(cases):
        b, c_in, c_out = draw(1, 3), draw(1, 4), draw(1, 5)
        k = (draw(1, 7), draw(1, 7))
        s = (draw(1, 4), draw(1, 4))
        p = (draw(0, k[0] // 2), draw(0, k[1] // 2))  # PyTorch allows padding up to half the kernel
        w, h = draw(k[0], 40), draw(k[1], 40)
        conv = torch.nn.Conv2d(c_in, c_out, kernel_size=k, stride=s, padding=p, bias=False)
        with torch.no_grad():
            # PyTorch is channels-first: (B, C, W, H) with the first spatial axis paired with k1, s1, p1
            out = conv(torch.zeros(b, c_in, w, h))
        torch_shape = (out.shape[0], out.shape[2], out.shape[3], out.shape[1])
        mismatches += torch_shape != conv2d_output_shape(b, w, h, c_out, k, s, p)
    return Check("convolution output shape vs PyTorch", cases, float(mismatches), 0.0)


def conv_shape_table(model: torch.nn.Module, input_size: int):
    """The formula applied to every convolution of ``model`` (and its max-pool, whose output size follows the same
    formula) for one face at ``input_size``: one row per layer, in the order the data flows.

    Each row gives the layer's input side, kernel, stride and padding, the formula worked out, the side PyTorch
    produces, and the side in Q1's layer table (``model.layer_rows`` at the same input size); ``matches`` says all
    three agree. Square inputs and kernels: W and H follow the same steps.
    """
    import pandas as pd

    from fer_lib.model.network import layer_rows, traced_shapes

    seen = traced_shapes(model, input_size, lambda m: isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d)))
    table_sides = {row["layer"]: row["output (C, H, W)"] for _, row in layer_rows(model, input_size)[0].iterrows()}
    rows = []
    for name, (shape_in, shape_out) in seen.items():
        m = model.get_submodule(name)
        pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
        (k, _), (s, _), (p, _) = pair(m.kernel_size), pair(m.stride), pair(m.padding)
        side = shape_in[-1]
        out_channels = m.out_channels if isinstance(m, torch.nn.Conv2d) else shape_in[0]
        _, formula_side, _, _ = conv2d_output_shape(1, side, side, out_channels, (k, k), (s, s), (p, p))
        q1 = table_sides.get(name, "")
        q1_side = int(q1.split("x")[-1]) if q1 else None
        rows.append({"layer": name, "kind": "convolution" if isinstance(m, torch.nn.Conv2d) else "max-pool",
                     "input side": side, "k, s, p": f"{k}, {s}, {p}",
                     "formula": f"\u230a({side} + 2\u00b7{p} \u2212 {k}) / {s}\u230b + 1 = {formula_side}",
                     "output (C, H, W)": f"{out_channels}x{formula_side}x{formula_side}",
                     "PyTorch": "x".join(map(str, shape_out)), "Q1's table": q1,
                     "matches": formula_side == shape_out[-1] == q1_side})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- batch norm


def batchnorm_forward(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5):
    """y and the intermediates for an (m, features) mini-batch; the variance is the biased 1/m one."""
    mu = x.mean(0)
    var = ((x - mu) ** 2).mean(0)
    x_hat = (x - mu) / torch.sqrt(var + eps)
    return gamma * x_hat + beta, {"mu": mu, "var": var, "x_hat": x_hat}


def batchnorm_gradients(x: torch.Tensor, gamma: torch.Tensor, dl_dy: torch.Tensor, eps: float = 1e-5) -> dict:
    """The closed forms derived in notebook 06, from dl/dy_i alone."""
    m = x.shape[0]
    mu = x.mean(0)
    var = ((x - mu) ** 2).mean(0)
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = (x - mu) * inv_std
    dl_dxhat = dl_dy * gamma
    dl_dvar = (dl_dxhat * (x - mu)).sum(0) * -0.5 * inv_std ** 3
    dl_dmu = -(dl_dxhat * inv_std).sum(0) + dl_dvar * (-2 * (x - mu)).mean(0)  # second term is exactly 0
    dl_dx = dl_dxhat * inv_std + dl_dvar * 2 * (x - mu) / m + dl_dmu / m
    return {"x_hat": dl_dxhat, "var": dl_dvar, "mu": dl_dmu, "x": dl_dx,
            "gamma": (dl_dy * x_hat).sum(0), "beta": dl_dy.sum(0)}


def verify_batchnorm(cases: int = 200, seed: int = 0, tolerance: float = 1e-10) -> Check:
    """Every batch-norm gradient against autograd in float64, and dx, dgamma, dbeta against F.batch_norm."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(cases):
        m, f = int(torch.randint(2, 33, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        scale = float(torch.rand(1, generator=g)) * 5 + 0.1
        x = (torch.randn(m, f, generator=g, dtype=torch.float64) * scale).requires_grad_()
        gamma = torch.randn(f, generator=g, dtype=torch.float64).requires_grad_()
        beta = torch.randn(f, generator=g, dtype=torch.float64).requires_grad_()
        r = torch.randn(m, f, generator=g, dtype=torch.float64)  # loss l = sum(r * y), so dl/dy = r
        y, inter = batchnorm_forward(x, gamma, beta)
        for t in inter.values():
            t.retain_grad()
        (r * y).sum().backward()
        closed = batchnorm_gradients(x.detach(), gamma.detach(), r)
        auto = {"x_hat": inter["x_hat"].grad, "var": inter["var"].grad, "mu": inter["mu"].grad, "x": x.grad,
                "gamma": gamma.grad, "beta": beta.grad}
        # note: autograd's dl/dmu counts only paths through mu, as the derivation does
        for key in auto:
            worst = max(worst, (closed[key] - auto[key]).abs().max().item())
        # and PyTorch's own batch norm layer (training mode) gives the same dx, dgamma, dbeta
        x2, g2, b2 = (t.detach().clone().requires_grad_() for t in (x, gamma, beta))
        (r * F.batch_norm(x2, None, None, g2, b2, training=True, eps=1e-5)).sum().backward()
        for key, t in (("x", x2), ("gamma", g2), ("beta", b2)):
            worst = max(worst, (closed[key] - t.grad).abs().max().item())
    return Check("batch-norm gradients vs automatic differentiation (double precision)", cases, worst, tolerance)


# ---------------------------------------------------------------------------------------------- softmax + CE


def softmax_cross_entropy_gradient(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """dL/dz = softmax(z) - onehot(target), for logits z (N, K) and class indices (N,)."""
    return torch.softmax(z, dim=1) - F.one_hot(target, z.shape[1]).to(z.dtype)


def verify_softmax_cross_entropy(cases: int = 200, seed: int = 0, tolerance: float = 1e-12) -> Check:
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(cases):
        n, k = int(torch.randint(1, 17, (1,), generator=g)), int(torch.randint(2, 11, (1,), generator=g))
        z = (torch.randn(n, k, generator=g, dtype=torch.float64) * 4).requires_grad_()
        target = torch.randint(0, k, (n,), generator=g)
        F.cross_entropy(z, target, reduction="sum").backward()
        worst = max(worst, (softmax_cross_entropy_gradient(z.detach(), target) - z.grad).abs().max().item())
    return Check("softmax + cross-entropy gradient vs automatic differentiation (double precision)", cases, worst,
                 tolerance)


def error_words(max_error: float) -> str:
    """'no mismatch' for an exact match (integer shapes), else 'largest error 3e-14'."""
    return "no mismatch" if max_error == 0 else f"largest error {max_error:.0e}"


def checks_answer(checks: list[Check], shapes=None, input_size: int | None = None) -> str:
    """The page's short answer: whether every closed form matched PyTorch, how closely, and (given Q1's
    ``conv_shape_table``) that the convolution formula reproduces every shape of the model at ``input_size``."""
    failed = [c.name for c in checks if not c.passed]
    if failed:
        return "**Not verified:** " + "; ".join(failed) + " disagreed with PyTorch."
    parts = [f"{c.name} ({c.cases} random cases, {error_words(c.max_error)})" for c in checks]
    text = ("The three derivations (the convolution output shape, the batch-norm gradients, and the gradient of "
            "softmax followed by cross-entropy, which is the softmax output minus the one-hot target) are worked "
            "step by step, and each closed form matches PyTorch: " + "; ".join(parts) + ".")
    if shapes is not None and len(shapes):
        convs = int((shapes["kind"] == "convolution").sum())
        verdict = "reproduces" if bool(shapes["matches"].all()) else "does NOT reproduce"
        text += (f" Applied to all {convs} convolutions of the model at {input_size}x{input_size}, the shape formula "
                 f"{verdict} every output shape of Q1's layer table.")
    return text
