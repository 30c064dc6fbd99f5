"""Q4: saliency and other attributions (Captum), where they fall on the face, how far methods agree, and
the Adebayo et al. sanity check.

Every method returns maps (B, H, W) in [0, 1] at the input's own size (absolute attribution, max over the
3 identical input channels, divided by each map's maximum). It runs on a private copy of the model, on the
model's device (inputs are moved there; maps come back as CPU numpy arrays), and never changes the model's
parameters, buffers, mode or hooks, nor torch's global random state.

torchvision's BasicBlock calls one in-place ``ReLU`` module twice. Module backward hooks (which
Captum's guided backpropagation uses) then see one module firing twice per pass, and in-place ops
clobber the tensors the hooks hold. :func:`explainable_copy` gives every ReLU call its own
non-in-place module; the copy computes exactly the same function.
"""
from __future__ import annotations

import copy
import itertools
import types
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from . import CLASS_NAMES

if TYPE_CHECKING:
    import pandas as pd

SMOOTHGRAD_SAMPLES = 16  # noisy copies averaged per face
SMOOTHGRAD_NOISE = 0.15  # noise std as a share of the input's value range (Smilkov et al. suggest 10-20%)
IG_STEPS = 32  # Riemann steps along the path from the black baseline
GRADCAM_LAYER = "layer3"  # layer4's map is the coarsest (2x2 at 48 px input); layer3 still separates eyes from mouth
SANITY_THRESHOLD = 0.5  # a method whose maps still correlate above this once layer3 is random is flagged
FACES_PER_CLASS = 10  # correctly classified faces per class behind the region and agreement findings


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live: code that runs a model builds its inputs there."""
    return next(model.parameters()).device


@contextmanager
def _quiet_captum_import():
    """Captum imports tqdm.auto, which warns in a notebook without ipywidgets; its bars are not used here."""
    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        yield


@contextmanager
def seeded(device: torch.device | str, seed: int):
    """Seed the CPU generator (and ``device``'s, if CUDA) inside the block; restore them afterwards."""
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        for i in cuda:
            torch.cuda.default_generators[i].manual_seed(seed)
        yield


def map_sizes(model: nn.Module, layers, input_size: int) -> dict[str, tuple[int, int]]:
    """{layer: (h, w)} of each layer's output map for a (1, 3, input_size, input_size) input."""
    twin = copy.deepcopy(model).eval()  # hooks go on a private copy
    sizes: dict[str, tuple[int, int]] = {}
    for name in layers:
        twin.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[-2:])))
    with torch.no_grad():
        twin(torch.zeros(1, 3, input_size, input_size, device=model_device(model)))
    return sizes


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
    maps = attr.detach().float().abs().amax(dim=1)
    peak = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / peak).cpu().numpy()


def _chunked(attribute, x: torch.Tensor, target, chunk: int) -> np.ndarray:
    """Run ``attribute(x, target) -> (b, H, W)`` over chunks of the batch, on x's device."""
    target = torch.as_tensor(target, device=x.device).expand(len(x))
    if len(x) == 0:
        return np.zeros((0, *x.shape[-2:]), dtype=np.float32)
    return np.concatenate([attribute(x[i:i + chunk], target[i:i + chunk]) for i in range(0, len(x), chunk)])


def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Simonyan et al. 2013: |d logit_target / d input|, max over channels."""
    with _quiet_captum_import():
        from captum.attr import Saliency

    twin = explainable_copy(model)
    x = x.to(model_device(model))
    return _chunked(lambda xb, tb: _to_maps(Saliency(twin).attribute(xb.clone().requires_grad_(), target=tb, abs=True)),
                    x, target, 64)


def smoothgrad(model: nn.Module, x: torch.Tensor, target: torch.Tensor, samples: int = SMOOTHGRAD_SAMPLES,
               noise: float = SMOOTHGRAD_NOISE, seed: int = 0) -> np.ndarray:
    """Smilkov et al. 2017: saliency averaged over noisy copies (noise: std as a share of the input range).

    The noise is drawn from a private, seeded generator state: the same call gives the same maps.
    """
    with _quiet_captum_import():
        from captum.attr import NoiseTunnel, Saliency

    device = model_device(model)
    x = x.to(device)
    sigma = noise * float(x.max() - x.min()) if len(x) else 0.0
    tunnel = NoiseTunnel(Saliency(explainable_copy(model)))
    with seeded(device, seed):
        return _chunked(lambda xb, tb: _to_maps(tunnel.attribute(
            xb.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=samples, stdevs=sigma, target=tb, abs=True)),
            x, target, 8)  # 8 faces x samples copies per pass


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = IG_STEPS) -> np.ndarray:
    """Sundararajan et al. 2017, from a black-face baseline (the normalised value of pixel 0)."""
    with _quiet_captum_import():
        from captum.attr import IntegratedGradients

    from .model import preprocess

    x = x.to(model_device(model))
    black = preprocess(torch.zeros(1, x.shape[-2], x.shape[-1], dtype=torch.uint8), x.shape[-1]).to(x.device)
    ig = IntegratedGradients(explainable_copy(model))
    return _chunked(lambda xb, tb: _to_maps(ig.attribute(xb, baselines=black.expand_as(xb), target=tb, n_steps=steps,
                                                         internal_batch_size=64)), x, target, 16)


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str = GRADCAM_LAYER) -> np.ndarray:
    """Selvaraju et al. 2017 on ``layer``, upsampled bilinearly to the input size."""
    with _quiet_captum_import():
        from captum.attr import LayerAttribution, LayerGradCam

    twin = explainable_copy(model)
    x = x.to(model_device(model))
    cam = LayerGradCam(twin, twin.get_submodule(layer))

    def attribute(xb, tb):
        a = cam.attribute(xb, target=tb, relu_attributions=True)
        return _to_maps(LayerAttribution.interpolate(a, tuple(xb.shape[-2:]), interpolate_mode="bilinear"))

    return _chunked(attribute, x, target, 64)


def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Springenberg et al. 2015: gradients with negative signals stopped at every ReLU on the way back."""
    with _quiet_captum_import():
        from captum.attr import GuidedBackprop

    gbp = GuidedBackprop(explainable_copy(model))
    x = x.to(model_device(model))
    with warnings.catch_warnings():  # Captum announces its temporary ReLU hooks; they act on our copy only
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        return _chunked(lambda xb, tb: _to_maps(gbp.attribute(xb.clone().requires_grad_(), target=tb)), x, target, 64)


METHODS = {"saliency": saliency, "SmoothGrad": smoothgrad, "Integrated Gradients": integrated_gradients,
           "Grad-CAM": grad_cam, "guided backprop": guided_backprop}


def attribution_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, methods: dict | None = None
                     ) -> dict[str, np.ndarray]:
    """{method name: maps (B, H, W) in [0, 1]} for every method, on the same faces and targets."""
    return {name: fn(model, x, target) for name, fn in (methods or METHODS).items()}


def method_notes(model: nn.Module, input_size: int) -> str:
    """The methods' settings as Markdown bullets, with the numbers this run uses (map sizes measured)."""
    sizes = map_sizes(model, [GRADCAM_LAYER, "layer4"], input_size)
    cam, top = ("x".join(map(str, sizes[n])) for n in (GRADCAM_LAYER, "layer4"))
    return "\n".join([
        (f"- **SmoothGrad** (Smilkov et al. 2017): saliency averaged over {SMOOTHGRAD_SAMPLES} copies of the face "
         f"with Gaussian noise (standard deviation {SMOOTHGRAD_NOISE:.0%} of the input's range), which removes much "
         "of the gradient's pixel-level noise;"),
        (f"- **Integrated Gradients** (Sundararajan et al. 2017): gradients integrated in {IG_STEPS} steps along a "
         "straight path from a black face;"),
        (f"- **Grad-CAM** (Selvaraju et al. 2017) on `{GRADCAM_LAYER}`, whose map is {cam} at this run's "
         f"{input_size}x{input_size} input (`layer4`'s is {top}), upsampled to the face;"),
        ("- **guided backpropagation** (Springenberg et al. 2015): gradients with negative signals stopped at every "
         "ReLU on the way back."),
    ])


# ------------------------------------------------------------------------------------------ regions

REGION_LABELS = {"eyes_brows": "eyes/brows", "nose": "nose", "mouth": "mouth", "rest_of_face": "rest of the face",
                 "outside_face": "area outside the face"}
REGION_SHORT = {**REGION_LABELS, "rest_of_face": "rest of face", "outside_face": "outside face"}  # for small tiles


def face_regions(size: int = 48) -> dict[str, np.ndarray]:
    """Boolean (size, size) masks that partition the aligned FER2013 frame (every pixel in exactly one):
    the eyes-and-brows band, the nose, the mouth box, the rest of the face oval, and outside the oval.

    FER2013 faces are roughly registered (eyes near rows 17-22 of 48, mouth near 33-40), so fixed
    regions, given as fractions of the frame, are a fair first approximation at any input size.
    """
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    face = ((x - 0.5) / 0.44) ** 2 + ((y - 0.52) / 0.5) ** 2 <= 1
    eyes = face & (y >= 0.2) & (y < 0.5) & (x >= 0.1) & (x < 0.9)
    nose = face & (y >= 0.5) & (y < 0.64) & (x >= 0.34) & (x < 0.66)
    mouth = face & (y >= 0.64) & (y < 0.92) & (x >= 0.24) & (x < 0.76)
    return {"eyes_brows": eyes, "nose": nose, "mouth": mouth, "rest_of_face": face & ~(eyes | nose | mouth),
            "outside_face": ~face}


def region_shares(maps: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per map, the share of its total attribution inside each region (masks (H, W) or (B, H, W)).

    An all-zero map has no distribution over the face: its shares are nan.
    """
    total = maps.reshape(len(maps), -1).sum(1)
    total = np.where(total > 0, total, np.nan)
    return {name: (maps * mask).reshape(len(maps), -1).sum(1) / total for name, mask in regions.items()}


def top_region(shares: dict[str, float], area: dict[str, float]) -> str | None:
    """The region with the most attribution for its size (share / area), or None without any attribution."""
    ratio = {r: shares[r] / area[r] for r in shares if area[r] > 0 and np.isfinite(shares[r])}
    return max(ratio, key=ratio.get) if ratio else None


def outside_shares(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{method: (B,) share of each map's mass outside the face oval of :func:`face_regions`}."""
    return {m: region_shares(v, {"outside_face": face_regions(v.shape[-1])["outside_face"]})["outside_face"]
            for m, v in maps.items()}


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps a[i], b[i] (B, H, W) -> (B,); nan for a constant map.

    Ties get their average rank, as in scipy.stats.spearmanr.
    """
    from scipy.stats import rankdata

    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / den, np.nan)


spearman_per_map = rank_correlation  # the name the sanity check used first


def _pair(a: str, b: str) -> str:
    return f"{a} / {b}"


def _grouped(groups: dict[str, list[str]], classes: list[str]) -> str:
    """'the nose for Angry and Sad, and the mouth for Happy', largest group first ('every class shown' for all)."""
    def who(cs: list[str]) -> str:
        return "every class shown" if len(classes) > 1 and set(cs) == set(classes) else _names(cs)

    items = [f"the {REGION_LABELS[r]} for {who(cs)}" for r, cs in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


def _agreement_word(rho: float) -> str:
    return "strongly" if rho >= 0.6 else "moderately" if rho >= 0.3 else "weakly"


def _names(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass
class AttributionFindings:
    """Where each method's maps fall on the face, per class, and how far the methods agree on the same face."""

    shares: pd.DataFrame  # index (class, method), columns regions: mean share of the maps' mass
    area: dict[str, float]  # region -> share of the image it covers
    agreement: pd.DataFrame  # index class, columns "A / B": mean Spearman rho of the two methods' maps
    agreement_all: pd.Series  # "A / B" -> mean rho over all faces
    outside_all: pd.Series  # method -> mean share of the mass outside the face, over all faces
    faces: dict[str, int]  # class -> number of faces behind its rows
    methods: list[str]

    def concentration(self):
        """shares / area: above 1 means a region gets more attribution than its size alone would give it."""
        return self.shares / self.shares.columns.map(self.area).to_numpy()

    def top_regions(self):
        """DataFrame class x method: the region with the most attribution for its size."""
        import pandas as pd

        rows = {c: {m: top_region(self.shares.loc[(c, m)].to_dict(), self.area) for m in self.methods}
                for c in self.faces}
        return pd.DataFrame(rows).T[self.methods]

    def consensus(self, cls: str) -> tuple[str | None, int]:
        """(the region most methods pick for ``cls``, how many pick it); ties go to the higher mean ratio."""
        picks = [r for r in self.top_regions().loc[cls] if r is not None]
        if not picks:
            return None, 0
        mean_ratio = self.concentration().xs(cls, level=0).mean()
        best = max(set(picks), key=lambda r: (picks.count(r), mean_ratio[r]))
        return best, picks.count(best)

    def distinctive_regions(self) -> dict[str, tuple[str, float]]:
        """class -> (region, excess): where the class's maps (mean over methods) hold the largest share of their
        mass above the mean of the other classes; ``excess`` is that difference (a share, e.g. 0.06)."""
        mean = self.shares.groupby(level=0, sort=False).mean()  # class x region, mean over methods
        out = {}
        for cls in mean.index:
            others = mean.drop(index=cls)
            if len(others):
                excess = mean.loc[cls] - others.mean()
                out[cls] = (str(excess.idxmax()), float(excess.max()))
        return out

    def agreement_matrix(self):
        """Methods x methods: mean rank correlation over all faces (1 on the diagonal)."""
        import pandas as pd

        m = pd.DataFrame(np.eye(len(self.methods)), index=self.methods, columns=self.methods)
        for a, b in itertools.combinations(self.methods, 2):
            m.loc[a, b] = m.loc[b, a] = self.agreement_all[_pair(a, b)]
        return m

    def class_sentences(self) -> list[str]:
        """The per-class discussion: top region per method, what sets the class apart, agreement, mass off the face."""
        tops = self.top_regions()
        outside = self.shares["outside_face"]
        special = self.distinctive_regions()
        lines = []
        for cls in CLASS_NAMES:
            if cls not in self.faces:
                lines.append(f"**{cls}**: no correctly classified validation face, so nothing to attribute.")
                continue
            n = self.faces[cls]
            parts = [f"**{cls}** ({n} face{'s' if n != 1 else ''})."]
            by_region: dict[str | None, list[str]] = {}
            for m in self.methods:
                by_region.setdefault(tops.loc[cls, m], []).append(m)
            parts.append("Most attribution for its size: " + ", ".join(
                f"the {REGION_LABELS[r]} ({', '.join(ms)})" if r else f"no region ({', '.join(ms)}: empty maps)"
                for r, ms in sorted(by_region.items(), key=lambda kv: -len(kv[1]))) + ".")
            if cls in special:
                region, excess = special[cls]
                parts.append(f"Against the other classes, most extra weight on the {REGION_LABELS[region]} "
                             f"({excess * 100:+.0f} percentage points of the mass, mean over the methods).")
            rho = self.agreement.loc[cls].dropna()
            if len(rho):
                parts.append(f"Agreement between methods: {_agreement_word(rho.mean()).removesuffix('ly')} (mean "
                             f"Spearman ρ {rho.mean():.2f} over {len(rho)} pairs, from {rho.min():.2f} for "
                             f"{rho.idxmin()} to {rho.max():.2f} for {rho.idxmax()}).")
            out = outside.xs(cls, level=0).dropna()
            if len(out):
                parts.append(f"Mass outside the face ({self.area['outside_face']:.0%} of the image): from "
                             f"{out.min():.0%} ({out.idxmin()}) to {out.max():.0%} ({out.idxmax()}).")
            lines.append(" ".join(parts))
        return lines

    def answer(self) -> str:
        """1-3 sentences: where the model looks per class, whether the methods agree, what falls off the face."""
        groups: dict[str, list[str]] = {}
        split = []
        for cls in self.faces:
            region, count = self.consensus(cls)
            if region is not None and count > len(self.methods) / 2:
                groups.setdefault(region, []).append(cls)
            else:
                split.append(cls)
        classes = list(self.faces)
        first = ("Relative to its size, the region that draws the most attribution (for most of the "
                 f"{len(self.methods)} methods) is {_grouped(groups, classes)}" if groups else
                 "No region draws the most attribution for most methods in any class")
        if split:
            first += f"{'; ' if groups else ': '}the methods split on {_names(split)}"
        special: dict[str, list[str]] = {}
        for cls, (region, _) in self.distinctive_regions().items():
            special.setdefault(region, []).append(cls)
        if special:
            first += ("; set against the other classes, the maps put the most extra weight on "
                      + _grouped(special, classes))
        first += "."
        rho = self.agreement_all.dropna()
        second = (f"On the same face the methods agree {_agreement_word(rho.mean())} (mean Spearman ρ "
                  f"{rho.mean():.2f}; highest for {rho.idxmax()}, {rho.max():.2f}; lowest for {rho.idxmin()}, "
                  f"{rho.min():.2f}), " if len(rho) else "")
        worst = self.outside_all.idxmax()
        share, area = self.outside_all[worst], self.area["outside_face"]
        third = (f"{worst} puts {share:.0%} of its mass outside the face oval, {'more' if share > area else 'less'} "
                 f"than the {area:.0%} of the image that lies there.")
        return first + " " + (second + "and " + third if second else third)


def attribution_findings(maps: dict[str, np.ndarray], labels: np.ndarray,
                         regions: dict[str, np.ndarray] | None = None) -> AttributionFindings:
    """Findings from every method's maps (B, H, W) of the same faces, with their class labels (B,)."""
    import pandas as pd

    methods = list(maps)
    labels = np.asarray(labels)
    regions = regions or face_regions(next(iter(maps.values())).shape[-1])
    per_method = {m: region_shares(maps[m], regions) for m in methods}
    present = [int(c) for c in np.unique(labels)]
    rows = {(CLASS_NAMES[c], m): {r: float(np.nanmean(v[labels == c])) if np.isfinite(v[labels == c]).any()
                                  else np.nan for r, v in per_method[m].items()}
            for c in present for m in methods}
    shares = pd.DataFrame(rows).T
    shares.index.names = ["class", "method"]
    rho = {_pair(a, b): rank_correlation(maps[a], maps[b]) for a, b in itertools.combinations(methods, 2)}
    with warnings.catch_warnings():  # a class whose maps are all constant has no mean rho: nan
        warnings.simplefilter("ignore", RuntimeWarning)
        agreement = pd.DataFrame({CLASS_NAMES[c]: {p: np.nanmean(v[labels == c]) for p, v in rho.items()}
                                  for c in present}).T
        agreement_all = pd.Series({p: np.nanmean(v) for p, v in rho.items()}, dtype=float)
        outside_all = pd.Series({m: np.nanmean(per_method[m]["outside_face"]) for m in methods}, dtype=float)
    return AttributionFindings(shares, {r: float(mask.mean()) for r, mask in regions.items()}, agreement,
                               agreement_all, outside_all,
                               {CLASS_NAMES[c]: int((labels == c).sum()) for c in present}, methods)


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


def cascading_randomization(model: nn.Module, x: torch.Tensor, target: torch.Tensor, methods: dict | None = None,
                            seed: int = 0):
    """Adebayo et al. 2018: re-initialise layers from the top down, one stage at a time, and measure how
    much each method's maps still resemble the trained model's (mean Spearman rank correlation).

    The new weights come from a private generator state seeded with ``seed`` (the global one is untouched).
    Returns a DataFrame: rows "randomised down to <stage>", columns methods.
    """
    import pandas as pd

    methods = methods or METHODS
    reference = {name: fn(model, x, target) for name, fn in methods.items()}
    randomized = copy.deepcopy(model).eval()
    rows = {}
    with seeded(model_device(model), seed):
        for stage, names in RANDOMIZATION_ORDER:
            _reinitialise(randomized, names)
            rows[stage] = {}
            for name, fn in methods.items():
                rho = rank_correlation(reference[name], fn(randomized, x, target))
                rows[stage][name] = float(np.nanmean(rho)) if np.isfinite(rho).any() else np.nan
    table = pd.DataFrame(rows).T
    table.index.name = "randomised down to"
    return table


def insensitive_methods(table, threshold: float = SANITY_THRESHOLD) -> list[str]:
    """Methods whose maps still correlate above ``threshold`` once layer4 and layer3 are random."""
    return [m for m in table.columns if table.loc["layer3", m] > threshold]


def sanity_notes(threshold: float = SANITY_THRESHOLD) -> str:
    """How the sanity check is read, with its threshold."""
    return (f"A method that reflects the model should fall toward 0; a method still above {threshold:g} once "
            "`layer4` and `layer3` are random is flagged.")
