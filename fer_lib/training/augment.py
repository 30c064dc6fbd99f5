"""Batched augmentation on tensors: one affine grid (flip, shift, rotation, scale), random erasing, and CutMix.
The whole batch at once keeps the cores on vectorised kernels, where a per-image PIL pipeline spends its time in
Python and worker processes."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    flip: bool = True  # horizontal flip with probability 0.5 (faces are roughly symmetric)
    shift: float = 0.1  # max translation, as a fraction of the image side
    rotate_deg: float = 10.0  # max rotation either way
    scale: float = 0.1  # zoom in [1 - scale, 1 + scale]
    erase_p: float = 0.25  # probability of erasing one random rectangle
    erase_max_area: float = 0.15  # the rectangle's area as a fraction of the image, at most


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a float batch (B, C, H, W); randomness comes only from ``generator`` (resumable runs)."""
    b = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) * (high - low) + low

    angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180
    zoom = uniform(1 - cfg.scale, 1 + cfg.scale)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(b)
    tx, ty = uniform(-cfg.shift, cfg.shift) * 2, uniform(-cfg.shift, cfg.shift) * 2  # grid units span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.erase_p == 0:
        return x
    # random erasing: one rectangle per chosen image set to zero (the dataset mean after normalisation)
    h, w = x.shape[2:]
    area = torch.rand(b, generator=generator) * (cfg.erase_max_area - 0.02) + 0.02
    aspect = torch.exp(torch.rand(b, generator=generator) * 2.2 - 1.1)  # log-uniform in [1/3, 3]
    eh = (torch.sqrt(area * aspect) * h).clamp(1, h).long()
    ew = (torch.sqrt(area / aspect) * w).clamp(1, w).long()
    top = (torch.rand(b, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(b, generator=generator) * (w - ew + 1)).long()
    chosen = torch.rand(b, generator=generator) < cfg.erase_p
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    mask = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
            & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)) & chosen.view(b, 1, 1))
    return x.masked_fill(mask.unsqueeze(1).to(x.device), 0.0)


def cutmix(x: torch.Tensor, labels: torch.Tensor, p: float, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al., 2019) with probability ``p``: one rectangle of each face replaced by another face's, giving
    (images, the pasted faces' labels, lam) for the loss lam * CE(labels) + (1 - lam) * CE(pasted labels); lam is 1
    without a cut. ``p`` = 0 draws no random number, so runs without it are unchanged."""
    if p <= 0 or torch.rand(1, generator=generator).item() >= p:
        return x, labels, 1.0
    b, _, h, w = x.shape
    partner = torch.randperm(b, generator=generator)
    # lam ~ Beta(1, 1) = uniform: the rectangle covers 1 - lam of the face, clipped at the border
    cut = math.sqrt(1 - torch.rand(1, generator=generator).item())
    ch, cw = round(h * cut), round(w * cut)
    cy = int(torch.randint(h, (1,), generator=generator))
    cx = int(torch.randint(w, (1,), generator=generator))
    top, bottom = max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w)
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x[partner, :, top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (h * w)  # the area actually pasted
    return mixed, labels[partner], lam
