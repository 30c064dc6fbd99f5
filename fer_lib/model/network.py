"""The seed's model (torchvision ResNet18, fc = Dropout(0.5) + Linear(512, 7)), its initial weights, and its
preprocessing: faces scaled to [0, 1], resized (ResNet18 downsamples 32x: 48 px leaves layer4 a 2x2 map, a larger
input buys resolution at a quadratic cost), the gray channel repeated for the RGB stem, normalised as ImageNet's."""
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
    """The seed's ResNet18 and where its initial weights (as resolve_weights takes them) came from, in words."""
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    model.fc = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(512, NUM_CLASSES))
    path, _ = resolve_weights(weights)
    if path is None:
        missing = f"ImageNet weights not found at {imagenet_weights_path()}"
        return model, f"random initialisation ({'asked for' if weights in (None, 'random') else missing})"
    # the new head replaces ImageNet's 1000-way fc; every other tensor must match exactly
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        model.load_state_dict({**backbone, "fc.1.weight": model.fc[1].weight, "fc.1.bias": model.fc[1].bias})
    except RuntimeError as err:  # missing or unexpected names, other shapes
        raise ConfigError(f"{path}: not a ResNet18 state dict ({str(err).splitlines()[-1].strip()})") from None
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
