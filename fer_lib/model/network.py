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
    """(file to load or None, what the run will start from: the file's sha256 or "random").

    "imagenet" falls back to random initialisation with a warning when torchvision's cache lacks the file
    (no download is ever attempted); a path that is not a file is an error, since it is most likely a typo.
    """
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
    """The seed's ResNet18 and a sentence saying where its initial weights came from.

    ``weights``: "imagenet" (torchvision's cache, never a download), a path to a ResNet18 state dict,
    or None / "random".
    """
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
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    x = x.unsqueeze(1)  # (B, 1, H, W)
    if x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def module_lines(model: nn.Module) -> list[str]:
    """The repr of every leaf module in registration order: the flat list the seed report printed."""
    return [repr(m) for m in model.modules() if not list(m.children())]


def layer_table(model: nn.Module, input_size: int = 48):
    """torchinfo's layer statistics (output shapes, parameter counts, mult-adds) at the actual input size."""
    from torchinfo import summary

    return summary(model, input_size=(1, 3, input_size, input_size), depth=4, verbose=0,
                   col_names=("output_size", "num_params", "kernel_size"), row_settings=("var_names",))


def layer_rows(model: nn.Module, input_size: int = 48):
    """The layer table as a DataFrame (one row per module, indented by depth) and its totals.

    A DataFrame renders as an HTML table that never truncates a cell, unlike torchinfo's fixed-width text.
    """
    import pandas as pd

    stats = layer_table(model, input_size)
    rows = [{"layer": _dotted_name(info), "type": info.class_name,
             "output (C, H, W)": "x".join(map(str, info.output_size[1:])) if info.output_size else "",
             "parameters": info.num_params if info.is_leaf_layer else None,
             "kernel": _kernel_text(info.kernel_size)}
            for info in stats.summary_list if info.depth > 0]
    table = pd.DataFrame(rows).astype({"parameters": "Int64"})
    return table, {"parameters": stats.total_params, "mult_adds_millions": stats.total_mult_adds / 1e6}


def _dotted_name(info) -> str:
    """layer1.0.conv1 rather than torchinfo's bare "conv1", so each row says where it sits."""
    parts, node = [info.var_name], info.parent_info
    while node is not None and node.depth > 0:
        parts.append(node.var_name)
        node = node.parent_info
    return ".".join(reversed(parts))


def _kernel_text(kernel) -> str:
    if not kernel:
        return ""
    return "x".join(map(str, kernel)) if isinstance(kernel, (list, tuple)) else f"{kernel}x{kernel}"


def stage_map_sides(model: nn.Module, input_size: int = 48) -> dict[str, int]:
    """The side of the feature map after the stem and after each stage, e.g. {"stem": 12, ..., "layer4": 2}."""
    sides = {}
    for row in residual_structure(model, input_size):
        stage = row["block"].split(".")[0]
        sides.setdefault("stem", row["input (C, H, W)"][-1])
        sides[stage] = row["output (C, H, W)"][-1]
    return sides


def traced_shapes(model: nn.Module, input_size: int, selected) -> dict[str, tuple[tuple, tuple]]:
    """{module name: (input shape, output shape) without the batch axis} for the modules ``selected(module)``
    picks, in the order one face of ``input_size`` flows through them (the model is left in its mode)."""
    shapes = {}
    hooks = [module.register_forward_hook(
        lambda m, inp, out, name=name: shapes.__setitem__(name, (tuple(inp[0].shape[1:]), tuple(out.shape[1:]))))
        for name, module in model.named_modules() if selected(module)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def residual_structure(model: nn.Module, input_size: int = 48) -> list[dict]:
    """One row per residual block: its path, the shapes in and out, and what the skip connection carries.

    The seed's flat module list loses this wiring: each BasicBlock computes
    relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x)), where skip is the identity, or a 1x1 stride-2
    conv + BN ("downsample") when the block changes resolution and width.
    """
    rows = []
    shapes = traced_shapes(model, input_size, lambda m: type(m).__name__ == "BasicBlock")
    for name, (shape_in, shape_out) in shapes.items():
        block = model.get_submodule(name)
        if block.downsample is not None:
            conv = block.downsample[0]
            skip = (f"downsample: Conv2d({conv.in_channels}, {conv.out_channels}, 1x1, stride {conv.stride[0]})"
                    " + BatchNorm2d")
        else:
            skip = "identity"
        rows.append({"block": name, "input (C, H, W)": shape_in, "output (C, H, W)": shape_out,
                     "skip connection": skip})
    return rows


def map_sizes_sentence(model: nn.Module, input_size: int) -> str:
    """Q1's sentence on how the input size sets the feature-map sizes of the stages (computed, never typed)."""
    sides = stage_map_sides(model, input_size)
    text = (f"The stem leaves {sides['stem']}x{sides['stem']} maps; `layer2`, `layer3` and `layer4` work on "
            f"{sides['layer2']}x{sides['layer2']}, {sides['layer3']}x{sides['layer3']} and "
            f"**{sides['layer4']}x{sides['layer4']}** maps")
    if input_size != 48:
        native = stage_map_sides(model, 48)["layer4"]
        text += f" (at the faces' own 48x48, `layer4` would see {native}x{native})"
    return text + (", which bounds how finely Grad-CAM and the last layer's filters (Q4, Q5) can locate "
                   "anything.")
