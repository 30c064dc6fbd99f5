"""Inference: a model's logits for uint8 faces, with test-time views, and accuracy."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_lib.model.network import preprocess

TTA_MODES = ("none", "flip", "flip+shift")


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views a prediction averages: the face; its mirror image ("flip"); and, for "flip+shift", the face moved
    2 pixels (of 48) down, up, right and left, the small misalignments FER2013's crops have, the uncovered border
    filled by its edge (no black bars)."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {mode!r}")
    views = [x] if mode == "none" else [x, torch.flip(x, dims=[3])]
    if mode == "flip+shift":
        p, s = max(1, round(2 * x.shape[-1] / 48)), x.shape[-1]
        padded = F.pad(x, (p, p, p, p), mode="replicate")
        views += [padded[..., p - dy:p - dy + s, p - dx:p - dx + s] for dy, dx in ((p, 0), (-p, 0), (0, p), (0, -p))]
    return views


def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, input_size: int = 48,
                   batch_size: int = 256, tta: str = "none", device: str | torch.device | None = None
                   ) -> torch.Tensor:
    """Logits (N, 7) for uint8 faces (N, 48, 48), averaged over the views of ``tta``, on ``device`` or the model's."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    images = torch.as_tensor(images)
    out = [torch.zeros(0, 7)]
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                views = tta_views(preprocess(images[start:start + batch_size], input_size).to(device), tta)
                out.append((sum(model(v) for v in views) / len(views)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def accuracy(logits: torch.Tensor, labels: torch.Tensor | np.ndarray) -> float:
    return (logits.argmax(1) == torch.as_tensor(labels)).float().mean().item()
