"""The seed's model (torchvision ResNet18, fc = Dropout(0.5) + Linear(512, 7)), its weights and preprocessing.

Preprocessing, applied to a uint8 batch (B, 48, 48) by :func:`preprocess`:
  1. scale to [0, 1];
  2. resize to ``input_size`` x ``input_size`` (bilinear) when it is not 48; ResNet18 downsamples 32x,
     so 48x48 input leaves layer4 with a 2x2 map, and a larger input buys spatial resolution at a
     quadratic cost in compute;
  3. repeat the gray channel 3 times (the stem expects RGB);
  4. normalise with the ImageNet mean and standard deviation, which the pretrained weights expect.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fer_lib import NUM_CLASSES, ConfigError
from fer_lib.core.io import file_sha256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the file name torchvision's ResNet18_Weights.IMAGENET1K_V1 downloads into <torch hub>/checkpoints/
IMAGENET_FILE = "resnet18-f37072fd.pth"


class WeightsWarning(UserWarning):
    """ImageNet weights were asked for but are not available: the model starts from random weights."""


def resolve_weights(weights: str | Path | None, warn: bool = True) -> tuple[Path | None, str]:
    """(file to load or None, what the run will start from: the file's sha256 or "random") for "imagenet"
    (torchvision's cache, never a download: random with a warning where it lacks the file), "random" or None, or a
    ResNet18 state dict's path (one that is not a file is an error: most likely a typo)."""
    if weights in (None, "random"):
        return None, "random"
    if weights == "imagenet":
        path = imagenet_weights_path()
        if not path.is_file():
            if warn:
                warnings.warn(f"ImageNet weights not found at {path}; training starts from random initialisation. "
                              f"To use them, place torchvision's {IMAGENET_FILE} there (no download is attempted).",
                              WeightsWarning, stacklevel=2)
            return None, "random"
    else:
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"{path}: weights file not found (expected a ResNet18 state dict, "
                              "or 'imagenet' / 'random')")
    return path, "sha256:" + file_sha256(path)


def build_model(weights: str | Path | None = "imagenet", dropout: float = 0.5) -> tuple[nn.Module, str]:
    """The seed's ResNet18 and where its initial weights came from (the run records this note); ``weights`` as
    :func:`resolve_weights` takes them."""
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    model.fc = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(512, NUM_CLASSES))
    if weights in (None, "random"):
        return model, "random initialisation (asked for)"
    path, _ = resolve_weights(weights)
    if path is None:
        return model, f"random initialisation (ImageNet weights not found at {imagenet_weights_path()})"
    state = torch.load(path, map_location="cpu", weights_only=True)
    # the new head replaces ImageNet's 1000-way fc; every other tensor must match exactly
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ConfigError(f"{path}: not a ResNet18 state dict ({str(err).splitlines()[-1].strip()})") from None
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise ConfigError(f"{path}: not a ResNet18 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, f"ImageNet weights from {path}"


def imagenet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


def preprocess(images: torch.Tensor, input_size: int = 48) -> torch.Tensor:
    """uint8 or float (B, 48, 48) faces -> normalised float (B, 3, input_size, input_size)."""
    x = (images.float() / 255.0 if images.dtype == torch.uint8 else images.float()).unsqueeze(1)  # (B, 1, H, W)
    if x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std
