"""Inference: a model's logits for uint8 faces, with test-time views, and accuracy."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_lib.model.network import preprocess

TTA_MODES = ("none", "flip", "flip+shift")


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` (B, C, S, S) moved by (dy, dx) pixels, the uncovered border filled by its edge (no black bars)."""
    p = max(abs(dy), abs(dx))
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    s = x.shape[-1]
    return padded[..., p - dy:p - dy + s, p - dx:p - dx + s]


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views a prediction averages: the face; its mirror image ("flip"); and, for "flip+shift", the face moved
    2 pixels (of 48) up, down, left and right, the small misalignments FER2013's crops have."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {mode!r}")
    views = [x]
    if mode in ("flip", "flip+shift"):
        views.append(torch.flip(x, dims=[3]))
    if mode == "flip+shift":
        step = max(1, round(2 * x.shape[-1] / 48))
        views += [_shifted(x, dy, dx) for dy, dx in ((step, 0), (-step, 0), (0, step), (0, -step))]
    return views


def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, input_size: int = 48,
                   batch_size: int = 256, tta: bool | str = False,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """Logits (N, 7) for uint8 faces (N, 48, 48), averaged over the test-time views of ``tta`` (True = "flip").

    ``device`` defaults to the model's own device (where its parameters are).
    """
    mode = {False: "none", True: "flip"}.get(tta, tta) if isinstance(tta, bool) else tta
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    images = torch.as_tensor(images)
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = preprocess(images[start:start + batch_size], input_size).to(device)
                views = tta_views(x, mode)
                logits = sum(model(v) for v in views) / len(views)
                out.append(logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 7)


def accuracy(logits: torch.Tensor, labels: torch.Tensor | np.ndarray) -> float:
    return (logits.argmax(1) == torch.as_tensor(labels)).float().mean().item()
