"""Q4: saliency and other attributions (Captum), region shares, and the Adebayo et al. sanity check.

Every method returns maps (B, H, W) in [0, 1] (absolute attribution, max over the 3 identical input
channels, divided by each map's maximum) and works on a private copy of the model, so explaining
never changes the model's parameters, buffers, mode or hooks.

torchvision's BasicBlock calls one in-place ``ReLU`` module twice. Module backward hooks (which
Captum's guided backpropagation uses) then see one module firing twice per pass, and in-place ops
clobber the tensors the hooks hold. :func:`explainable_copy` gives every ReLU call its own
non-in-place module; the copy computes exactly the same function.
"""
from __future__ import annotations

import copy
import types
import warnings

import numpy as np
import torch
from torch import nn
from tqdm import TqdmWarning

# Captum imports tqdm.auto, which warns in a notebook without ipywidgets; its bars are not used here
warnings.filterwarnings("ignore", category=TqdmWarning)

from . import CLASS_NAMES

GRADCAM_LAYER = "layer3"  # 3x3 at 48x48 input; layer4 (2x2) can only say which quadrant mattered


def _block_forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu_out(out + identity)


def explainable_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of a torchvision ResNet whose ReLUs are separate, non-in-place modules."""
    from torchvision.models.resnet import BasicBlock

    twin = copy.deepcopy(model).eval()
    twin.relu = nn.ReLU()
    for module in twin.modules():
        if isinstance(module, BasicBlock):
            module.relu, module.relu_out = nn.ReLU(), nn.ReLU()
            module.forward = types.MethodType(_block_forward, module)
    return twin


def _to_maps(attr: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) attributions -> (B, H, W) in [0, 1]: |a| max over channels, per-map max scaling."""
    maps = attr.detach().abs().amax(dim=1)
    peak = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / peak).cpu().numpy()


def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Simonyan et al. 2013: |d logit_target / d input|, max over channels."""
    from captum.attr import Saliency

    return _to_maps(Saliency(explainable_copy(model)).attribute(x.clone().requires_grad_(), target=target, abs=True))


def smoothgrad(model: nn.Module, x: torch.Tensor, target: torch.Tensor, samples: int = 16,
               noise: float = 0.15) -> np.ndarray:
    """Smilkov et al. 2017: saliency averaged over noisy copies (noise: std as a share of the input range)."""
    from captum.attr import NoiseTunnel, Saliency

    sigma = noise * float(x.max() - x.min())
    tunnel = NoiseTunnel(Saliency(explainable_copy(model)))
    attr = tunnel.attribute(x.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=samples, stdevs=sigma,
                            target=target, abs=True)
    return _to_maps(attr)


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = 32) -> np.ndarray:
    """Sundararajan et al. 2017, from a black-face baseline (the normalised value of pixel 0)."""
    from captum.attr import IntegratedGradients

    from .model import preprocess

    baseline = preprocess(torch.zeros(1, 48, 48, dtype=torch.uint8), x.shape[-1]).expand_as(x)
    ig = IntegratedGradients(explainable_copy(model))
    return _to_maps(ig.attribute(x, baselines=baseline, target=target, n_steps=steps, internal_batch_size=64))


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str = GRADCAM_LAYER) -> np.ndarray:
    """Selvaraju et al. 2017 on ``layer``, upsampled bilinearly to the input size."""
    from captum.attr import LayerAttribution, LayerGradCam

    twin = explainable_copy(model)
    cam = LayerGradCam(twin, twin.get_submodule(layer)).attribute(x, target=target, relu_attributions=True)
    return _to_maps(LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear"))


def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Springenberg et al. 2015: gradients with negative signals stopped at every ReLU on the way back."""
    from captum.attr import GuidedBackprop

    with warnings.catch_warnings():  # Captum announces its temporary ReLU hooks; they act on our copy only
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        return _to_maps(GuidedBackprop(explainable_copy(model)).attribute(x.clone().requires_grad_(), target=target))


METHODS = {"saliency": saliency, "SmoothGrad": smoothgrad, "Integrated Gradients": integrated_gradients,
           "Grad-CAM": grad_cam, "guided backprop": guided_backprop}


# ------------------------------------------------------------------------------------------ regions


def face_regions(size: int = 48) -> dict[str, np.ndarray]:
    """Boolean masks of the aligned FER2013 frame: eyes and brows band, mouth box, outside the face oval.

    FER2013 faces are roughly registered (eyes near rows 17-22 of 48, mouth near 33-40), so fixed
    regions are a fair first approximation; the synthetic dataset also provides exact masks.
    """
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    face = ((x - 0.5) / 0.44) ** 2 + ((y - 0.52) / 0.5) ** 2 <= 1
    return {"eyes_brows": (y >= 0.2) & (y < 0.5) & (x >= 0.1) & (x < 0.9),
            "mouth": (y >= 0.64) & (y < 0.92) & (x >= 0.24) & (x < 0.76),
            "outside_face": ~face}


def region_shares(maps: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per map, the share of its total attribution inside each region (masks (H, W) or (B, H, W))."""
    total = maps.reshape(len(maps), -1).sum(1).clip(min=1e-12)
    return {name: (maps * mask).reshape(len(maps), -1).sum(1) / total for name, mask in regions.items()}


def region_table(maps: np.ndarray, labels: np.ndarray, regions: dict[str, np.ndarray] | None = None):
    """DataFrame: per class, the mean share of attribution per region; a last row gives each region's area."""
    import pandas as pd

    regions = regions or face_regions(maps.shape[-1])
    shares = region_shares(maps, regions)
    rows = {CLASS_NAMES[c]: {r: float(v[labels == c].mean()) for r, v in shares.items()} for c in np.unique(labels)}
    rows["(share of image area)"] = {r: float(m.mean()) for r, m in regions.items()}
    return pd.DataFrame(rows).T


# ------------------------------------------------------------------------------------------ sanity check

RANDOMIZATION_ORDER = [("fc", ("fc",)), ("layer4", ("layer4",)), ("layer3", ("layer3",)), ("layer2", ("layer2",)),
                       ("layer1", ("layer1",)), ("stem", ("conv1", "bn1"))]


def _reinitialise(model: nn.Module, names: tuple[str, ...]) -> None:
    for name in names:
        for module in model.get_submodule(name).modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()


def spearman_per_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (B, H, W)."""
    from scipy.stats import ConstantInputWarning, spearmanr

    with warnings.catch_warnings():  # an all-zero map (Grad-CAM after ReLU) has no ranking: nan, skipped
        warnings.simplefilter("ignore", ConstantInputWarning)
        return np.array([spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)])


def cascading_randomization(model: nn.Module, x: torch.Tensor, target: torch.Tensor, methods: dict | None = None,
                            seed: int = 0):
    """Adebayo et al. 2018: re-initialise layers from the top down, one stage at a time, and measure how
    much each method's maps still resemble the trained model's (mean Spearman rank correlation).

    Returns a DataFrame: rows "randomised down to <stage>", columns methods.
    """
    import pandas as pd

    methods = methods or METHODS
    reference = {name: fn(model, x, target) for name, fn in methods.items()}
    randomized = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    rows = {}
    for stage, names in RANDOMIZATION_ORDER:
        _reinitialise(randomized, names)
        rows[stage] = {name: float(np.nanmean(spearman_per_map(reference[name], fn(randomized, x, target))))
                       for name, fn in methods.items()}
    table = pd.DataFrame(rows).T
    table.index.name = "randomised down to"
    return table


def insensitive_methods(table, threshold: float = 0.5) -> list[str]:
    """Methods whose maps still correlate above ``threshold`` once layer4 and layer3 are random."""
    return [m for m in table.columns if table.loc["layer3", m] > threshold]


def region_sentences(table) -> list[str]:
    """One sentence per class of a :func:`region_table`: each region's share, and relative to its area."""
    area = table.loc["(share of image area)"]
    lines = []
    for name, row in table.drop(index="(share of image area)").iterrows():
        ratio = row / area
        strongest = "mouth" if ratio["mouth"] > ratio["eyes_brows"] else "eye/brow"
        lines.append(f"**{name}**: eyes/brows {row['eyes_brows']:.0%} ({ratio['eyes_brows']:.1f}x their area), "
                     f"mouth {row['mouth']:.0%} ({ratio['mouth']:.1f}x), outside the face {row['outside_face']:.0%} "
                     f"({ratio['outside_face']:.1f}x); the {strongest} region counts most for its size.")
    return lines
