"""Q4: attribution maps (Captum) of the grey 48x48 face the model sees before resizing and normalisation, the
Adebayo et al. randomisation check, where the maps fall among each face's landmark regions against the randomised
network on the same faces, and their faithfulness (deletion and insertion); :func:`saliency_answer` is the page's call.

Maps are (B, 48, 48) in [0, 1], taken on a private copy of the model (on its device) whose ReLUs are separate,
non-in-place modules: torchvision's BasicBlock calls one in-place ReLU twice, which breaks the module backward hooks of
guided backpropagation. The model's parameters, mode and hooks and torch's global random state are left untouched.
"""
from __future__ import annotations

import copy
import types
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fer_lib import CLASS_NAMES
from fer_lib.data.regions import FEATURES, LANDMARK_REGIONS, region_area, region_shares
from fer_lib.questions.q4_occlusion import (
    ALL,
    BOOTSTRAP,
    MIN_FACES,
    OCCLUDED,
    attribution_agreement,
    captum_attr,
    controls,
    fill,
    interval_sign,
    mean_interval,
    occlusion,
)

if TYPE_CHECKING:
    import pandas as pd

SMOOTHGRAD_SAMPLES = 50  # noisy copies averaged per face (Smilkov et al. 2017 use 50; fewer leave speckle)
SMOOTHGRAD_NOISE = 0.15  # noise std on the [0, 1] grey scale (Smilkov et al. suggest 10-20% of the range)
IG_STEPS = 64  # steps along the path from the black face (Captum's Gauss-Legendre rule)
GRADCAM_LAYER = "layer3"  # layer4's map is the coarsest (2x2 at 48 px input); layer3 still separates eyes from mouth
COSTLY = ("SmoothGrad", "Integrated Gradients")  # 50 and 64 backward passes per face: they explain fewer faces
FACES_PER_CLASS = 30  # correctly classified validation faces per class explained by the one-pass methods
SANITY_THRESHOLD = 0.5  # a method whose maps still correlate above this once layer3 is random is flagged
FLAG_STAGE = "layer3"  # the cascade step at which the threshold is read (fc, layer4 and layer3 random)
# deletion / insertion: shares of the 48x48 pixels removed (or revealed), denser where the curves move most
FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
BLUR_SIGMA = 3.0  # px: a removed pixel takes its value from the face blurred this much (edges gone, shading kept)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live: code that runs a model builds its inputs there."""
    return next(model.parameters()).device


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


class GreyInput(nn.Module):
    """``net`` behind its own preprocessing: grey faces (B, 1, 48, 48) in [0, 1] -> logits (B, 7).

    The steps of :func:`fer_lib.model.network.preprocess` (resize to the input size, three channels, ImageNet
    normalisation), differentiable, so attributions are taken with respect to the one grey channel.
    """

    def __init__(self, net: nn.Module, input_size: int):
        super().__init__()
        self.net, self.input_size = net, input_size

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        from fer_lib.model.network import preprocess

        return self.net(preprocess(grey[:, 0], self.input_size))


def grey_faces(faces, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, 48, 48) faces (or float ones in [0, 1]) -> float (B, 1, 48, 48) in [0, 1] on ``device``."""
    x = torch.as_tensor(np.asarray(faces) if not isinstance(faces, torch.Tensor) else faces)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.unsqueeze(1).to(device)


def attribution_maps(method: str, model: nn.Module, faces, target, input_size: int = 48,
                     samples: int = SMOOTHGRAD_SAMPLES) -> np.ndarray:
    """``method``'s maps of grey ``faces`` for classes ``target`` (Captum, on an :func:`explainable_copy`):
    |attribution| divided by each map's maximum, (B, 48, 48) in [0, 1]. SmoothGrad's noise (``samples`` copies) comes
    from a private generator state seeded with 0: the same call gives the same maps."""
    attr = captum_attr()
    device = model_device(model)
    net = GreyInput(explainable_copy(model), input_size).to(device)
    x = grey_faces(faces, device)
    target = torch.as_tensor(target, device=device).expand(len(x))
    cam = attr.LayerGradCam(net, net.net.get_submodule(GRADCAM_LAYER))
    chunk, attribute = {  # faces per pass: about 128 images through the network at once
        "saliency": (64, lambda xb, tb: attr.Saliency(net).attribute(xb, target=tb, abs=True)),
        "SmoothGrad": (max(1, 128 // samples), lambda xb, tb: attr.NoiseTunnel(attr.Saliency(net)).attribute(
            xb, nt_type="smoothgrad", nt_samples=samples, stdevs=SMOOTHGRAD_NOISE, target=tb, abs=True)),
        "Integrated Gradients": (2, lambda xb, tb: attr.IntegratedGradients(net).attribute(  # from a black face
            xb, baselines=torch.zeros_like(xb), target=tb, n_steps=IG_STEPS, internal_batch_size=128)),
        "Grad-CAM": (64, lambda xb, tb: attr.LayerAttribution.interpolate(
            cam.attribute(xb, target=tb, relu_attributions=True), tuple(xb.shape[-2:]), interpolate_mode="bilinear")),
        "guided backprop": (64, lambda xb, tb: attr.GuidedBackprop(net).attribute(xb, target=tb)),
    }[method]
    out = [np.zeros((0, *x.shape[-2:]), dtype=np.float32)]
    with seeded(device, 0), warnings.catch_warnings():  # Captum announces its temporary ReLU hooks (on our copy)
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        for i in range(0, len(x), chunk):
            xb = x[i:i + chunk].clone().requires_grad_()
            maps = attribute(xb, target[i:i + chunk]).detach().float().abs().amax(1)  # |a|, (b, H, W)
            out.append((maps / maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)).cpu().numpy())
    return np.concatenate(out)


saliency = partial(attribution_maps, "saliency")  # Simonyan et al. 2013: |d logit / d grey pixel|
smoothgrad = partial(attribution_maps, "SmoothGrad")  # Smilkov et al. 2017: saliency averaged over noisy copies
METHODS = {"saliency": saliency, "SmoothGrad": smoothgrad,
           "Integrated Gradients": partial(attribution_maps, "Integrated Gradients"),  # Sundararajan et al. 2017
           "Grad-CAM": partial(attribution_maps, "Grad-CAM"),  # Selvaraju et al. 2017, on GRADCAM_LAYER, upsampled
           "guided backprop": partial(attribution_maps, "guided backprop")}  # Springenberg et al. 2015


def explained_faces(probs: np.ndarray, labels: np.ndarray, per_class: int = FACES_PER_CLASS, seed: int = 0
                    ) -> np.ndarray:
    """Indices of up to ``per_class`` correctly classified faces per class, drawn at random (seeded), ordered by
    class: a sample that is neither the model's surest faces nor its hardest. With the same seed, a smaller
    ``per_class`` draws a subset of a larger one's faces."""
    rng = np.random.default_rng(seed)
    correct = probs.argmax(1) == labels
    chosen = [np.sort(rng.permutation(np.flatnonzero(correct & (labels == c)))[:per_class])
              for c in range(probs.shape[1])]
    return np.concatenate(chosen).astype(np.int64)


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


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():  # an all-zero map has nan shares; a column of nothing but nan stays nan
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


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


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """An eval-mode copy with every layer re-initialised, top down, from a private generator seeded with ``seed``:
    the network of the sanity check's last step (the control that keeps the architecture, not what it learned)."""
    twin = copy.deepcopy(model).eval()
    with seeded(model_device(model), seed):
        for _, names in RANDOMIZATION_ORDER:
            _reinitialise(twin, names)
    return twin


@dataclass
class Explained:
    """Every method's maps of the explained faces, on the trained network and down the randomisation cascade."""

    faces: dict[str, np.ndarray]  # method -> indices (into the faces given) of the faces it explains
    maps: dict[str, np.ndarray]  # method -> (n, 48, 48) the trained network's maps of those faces
    random_maps: dict[str, np.ndarray]  # method -> (n, 48, 48) the fully randomised network's maps (the last step)
    rho: dict[str, np.ndarray]  # method -> (steps, n) Spearman correlation with the trained maps after each step
    stages: list[str]  # the cascade's steps: "randomised down to" fc, layer4, ... stem


def explain(model: nn.Module, faces, target, input_size: int = 48, methods: dict | None = None,
            subsets: dict[str, np.ndarray] | None = None, seed: int = 0) -> Explained:
    """Maps of every method on the trained model, then Adebayo et al.'s (2018) cascading randomisation: layers are
    re-initialised from the top down, one stage at a time, and every face's maps are compared with the trained
    model's (Spearman rank correlation). ``subsets`` names, per method, the faces it explains (default: all).

    The new weights come from a private generator state seeded with ``seed`` (the global one is untouched); the
    last step's network is :func:`randomised_copy` with the same seed, and its maps are the region control.
    """
    methods = methods or METHODS
    faces, target = np.asarray(faces), np.asarray(target)
    idx = {m: np.asarray((subsets or {}).get(m, np.arange(len(faces))), dtype=np.int64) for m in methods}
    maps = {m: fn(model, faces[idx[m]], target[idx[m]], input_size) for m, fn in methods.items()}
    rho: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    current: dict[str, np.ndarray] = {}
    randomized = copy.deepcopy(model).eval()
    with seeded(model_device(model), seed):
        for _, names in RANDOMIZATION_ORDER:
            _reinitialise(randomized, names)
            for m, fn in methods.items():
                current[m] = fn(randomized, faces[idx[m]], target[idx[m]], input_size)
                rho[m].append(rank_correlation(maps[m], current[m]))
    return Explained(idx, maps, current, {m: np.stack(r) for m, r in rho.items()},
                     [stage for stage, _ in RANDOMIZATION_ORDER])


def sanity_table(explained: Explained, n_boot: int = BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """Index (method, step): the mean rank correlation with the trained maps over the method's faces ("rho"),
    its 95% bootstrap interval over faces ("low", "high") and the number of faces."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = {}
    for m, rho in explained.rho.items():
        n = rho.shape[1]
        low, high = mean_interval(rho.T, n_boot, rng)  # (steps,) each
        for s, stage in enumerate(explained.stages):
            rows[(m, stage)] = {"rho": float(_nanmean(rho[s], 0)), "low": low[s], "high": high[s], "faces": n}
    table = pd.DataFrame(rows).T.astype({"rho": float, "low": float, "high": float, "faces": int})
    table.index.names = ["method", "randomised down to"]
    return table


def insensitive_methods(table: pd.DataFrame, threshold: float = SANITY_THRESHOLD, stage: str = FLAG_STAGE
                        ) -> list[str]:
    """Methods whose mean correlation is still above ``threshold`` once the layers down to ``stage`` are random."""
    return [m for m in dict.fromkeys(table.index.get_level_values(0)) if table.loc[(m, stage), "rho"] > threshold]


# ------------------------------------------------------------------------------------------ region findings


@dataclass
class RegionFindings:
    """Where each method's maps fall among each face's landmark regions, against the same method on the fully
    randomised network on the same faces (same architecture, input and centre bias, nothing learned). Only faces
    whose landmarks the detector found count.

    Shares are fractions of a map's mass (0.05 = 5 percentage points); low / high bound 95% bootstrap intervals over
    faces; sign is +1 / -1 where the interval lies above / below 0, else 0 (no clear difference).
    """

    vs_random: pd.DataFrame  # (method, region): trained, randomised, difference, low, high, sign, faces
    by_class: pd.DataFrame  # (class, method, region): trained, randomised, difference, low, high, sign, faces,
    # and excess (the class's difference minus the mean difference of all classes), excess_low, excess_high
    area: dict[str, float]  # region -> mean share of the frame it covers
    faces: dict[str, int]  # class -> explained faces with landmarks (the ones that count)
    methods: list[str]
    voters: list[str]  # the methods that pass the sanity check: only they count in consensus()

    def consensus(self, table: pd.DataFrame | None = None) -> pd.Series:
        """+1 / -1 for the rows (all index levels but the method) where more than half of the voters with rows
        find the difference in that direction and none the other; 0 otherwise."""
        table = self.vs_random if table is None else table
        signs = table["sign"][table.index.get_level_values("method").isin(self.voters)]
        keys = [n for n in table.index.names if n != "method"]

        def agree(s):
            up, down = (s > 0).sum(), (s < 0).sum()
            return 1 if up > len(s) / 2 and not down else -1 if down > len(s) / 2 and not up else 0

        if not len(signs):
            return signs.astype(int)
        return signs.groupby(level=keys, sort=False).agg(agree)

    def class_effects(self) -> pd.DataFrame:
        """The per-class effects beyond the randomised network on the four features (brows, eyes, nose, mouth)
        that the voters agree on, strongest first; each with the numbers of the agreeing method whose interval lies
        farthest from 0 ("method", "difference", "low", "high", "excess", ...) and "agree" (methods agreeing) of
        "voting" (voters with rows)."""
        import pandas as pd

        found = self.consensus(self.by_class)
        rows = []
        for (cls, region), sign in found.items():
            if not sign or region not in FEATURES:
                continue
            cells = self.by_class.xs((cls, region), level=("class", "region"))
            cells = cells[cells.index.isin(self.voters)]
            agreeing = cells[cells["sign"] == sign]
            strength = np.minimum(agreeing["low"].abs(), agreeing["high"].abs())
            best = strength.idxmax()
            rows.append({"class": cls, "region": region, "method": best, **agreeing.loc[best].to_dict(),
                         "strength": float(strength.max()), "agree": len(agreeing), "voting": len(cells)})
        columns = ["class", "region", "method", *self.by_class.columns, "strength", "agree", "voting"]
        out = pd.DataFrame(rows, columns=columns)
        return out.sort_values("strength", ascending=False, ignore_index=True)


def region_findings(explained: Explained, regions: dict[str, np.ndarray], labels: np.ndarray, found: np.ndarray,
                    flagged=(), n_boot: int = BOOTSTRAP, seed: int = 0, methods=None) -> RegionFindings:
    """Findings from :func:`explain`'s maps, the regions of every face given to it ({region: (N, H, W)}), their class
    labels (N,) and whether the detector found each face's landmarks (N,); faces without them are left out, and
    ``flagged`` methods do not vote; ``methods`` (default: all explained) are the methods that get rows. A face
    counts for a method where its maps on both networks hold mass (Grad-CAM's ReLU can leave a map all zero), and a
    class gets rows where at least ``MIN_FACES`` of its faces count."""
    import pandas as pd

    labels, found = np.asarray(labels), np.asarray(found, dtype=bool)
    rng = np.random.default_rng(seed)
    random_rows, class_rows = {}, {}
    methods = [m for m in explained.faces if methods is None or m in set(methods)]
    for m in methods:
        idx = explained.faces[m]
        keep = found[idx]
        y = labels[idx][keep]
        shares = [np.stack([region_shares(v[keep], {r: regions[r][idx][keep] for r in LANDMARK_REGIONS})[r]
                            for r in LANDMARK_REGIONS], 1) for v in (explained.maps[m], explained.random_maps[m])]
        trained, randomised = shares  # (n, R) each
        diff = trained - randomised
        counted = np.isfinite(diff).all(1)  # an all-zero map (Grad-CAM's ReLU can give one) has no shares
        low, high = mean_interval(diff, n_boot, rng)
        for j, r in enumerate(LANDMARK_REGIONS):
            random_rows[(m, r)] = {"trained": _nanmean(trained[:, j], 0), "randomised": _nanmean(randomised[:, j], 0),
                                   "difference": _nanmean(diff[:, j], 0), "low": low[j], "high": high[j],
                                   "faces": int(counted.sum())}
        kept = [c for c in np.unique(y) if (counted & (y == c)).sum() >= MIN_FACES]
        if not kept:
            continue
        # stratified: resample each class's faces within the class; the all-class mean weighs classes equally
        members = {c: np.flatnonzero(counted & (y == c)) for c in kept}
        boot = {c: diff[members[c][rng.integers(0, len(members[c]), (n_boot, len(members[c])))]].mean(1)
                for c in kept}  # (n_boot, R)
        mean_boot = np.mean(list(boot.values()), 0)
        means = {c: _nanmean(diff[y == c], 0) for c in kept}
        mean_all = np.mean(list(means.values()), 0)
        for c in kept:
            low, high = np.nanpercentile(boot[c], [2.5, 97.5], axis=0)
            e_low, e_high = np.nanpercentile(boot[c] - mean_boot, [2.5, 97.5], axis=0)
            t, z = _nanmean(trained[y == c], 0), _nanmean(randomised[y == c], 0)
            for j, r in enumerate(LANDMARK_REGIONS):
                class_rows[(CLASS_NAMES[c], m, r)] = {
                    "trained": t[j], "randomised": z[j], "difference": means[c][j], "low": low[j], "high": high[j],
                    "faces": int(counted[y == c].sum()), "excess": means[c][j] - mean_all[j], "excess_low": e_low[j],
                    "excess_high": e_high[j]}
    tables = []
    for rows, names in ((random_rows, ["method", "region"]), (class_rows, ["class", "method", "region"])):
        table = pd.DataFrame(rows).T if rows else pd.DataFrame(
            columns=["trained", "randomised", "difference", "low", "high", "faces"],
            index=pd.MultiIndex.from_arrays([[]] * len(names)))
        table = table.astype(float).astype({"faces": int})
        table.index.names = names
        table.insert(table.columns.get_loc("high") + 1, "sign", interval_sign(table["low"], table["high"]))
        tables.append(table)
    area = {r: float(np.mean(a)) if len(a) else np.nan
            for r, a in region_area({r: regions[r][found] for r in LANDMARK_REGIONS}).items()}
    faces = {CLASS_NAMES[c]: int((labels[found] == c).sum()) for c in np.unique(labels[found])}
    return RegionFindings(tables[0], tables[1], area, faces, methods, [m for m in methods if m not in set(flagged)])


# ------------------------------------------------------------------------------------------ faithfulness


def _perturbed(grey: np.ndarray, blurred: np.ndarray, rank: np.ndarray, fractions, insert: bool) -> np.ndarray:
    """(N, F, 48, 48): the faces with the first k = fraction * pixels of their order removed (blurred), or, with
    ``insert``, the blurred faces with those pixels revealed."""
    n, h, w = grey.shape
    ks = np.round(np.asarray(fractions) * h * w).astype(int)
    chosen = rank.reshape(n, 1, h * w) < ks.reshape(1, -1, 1)  # (N, F, P)
    src, dst = (grey, blurred) if insert else (blurred, grey)
    return np.where(chosen, src.reshape(n, 1, -1), dst.reshape(n, 1, -1)).reshape(n, len(ks), h, w)


def pixel_ranks(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, P) rank of each pixel in its map's order, most attributed first; ties broken at random."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    order = np.lexsort((rng.random(flat.shape), -flat), axis=1)  # by attribution, then by a random key
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(flat.shape[1])[None].repeat(len(flat), 0), axis=1)
    return rank


@dataclass
class Faithfulness:
    """Deletion and insertion curves (Petsiuk et al. 2018): the explained class's probability as pixels are removed
    (replaced by the blurred face) or revealed (on the blurred face) in attribution order, and in a random order."""

    fractions: np.ndarray  # (F,) shares of the pixels removed / revealed
    curves: dict[str, dict[str, np.ndarray]]  # "deletion" / "insertion" -> method -> (n, F); "random" -> (N, F)
    faces: dict[str, np.ndarray]  # method -> indices of its faces (rows of the "random" curves)
    table: pd.DataFrame  # index method: AUCs, the random order's AUCs on the same faces, gains with 95% intervals,
    # "faces", and "deletion better" / "insertion better" (the gain's interval lies above 0)


def faithfulness(model: nn.Module, faces: np.ndarray, target, maps: dict[str, np.ndarray], input_size: int = 48,
                 subsets: dict[str, np.ndarray] | None = None, fractions=FRACTIONS, sigma: float = BLUR_SIGMA,
                 n_boot: int = BOOTSTRAP, seed: int = 0) -> Faithfulness:
    """Deletion and insertion curves of uint8 ``faces`` (N, 48, 48) for classes ``target`` (N,) in the order of
    each method's maps (n, 48, 48) of the faces ``subsets[method]`` (default: all), and in a random order (one
    seeded permutation per face); a method's gains are over the random order on its own faces."""
    import pandas as pd
    from scipy.ndimage import gaussian_filter

    from fer_lib.model.inference import predict_logits

    faces, target = np.asarray(faces), np.asarray(target)
    idx = {m: np.asarray((subsets or {}).get(m, np.arange(len(faces))), dtype=np.int64) for m in maps}
    grey = faces.astype(np.float32) / 255.0
    blurred = gaussian_filter(grey, sigma=(0, sigma, sigma), mode="nearest")
    rng = np.random.default_rng(seed)
    ranks = {m: pixel_ranks(v, rng) for m, v in maps.items()}
    ranks["random"] = pixel_ranks(np.zeros_like(grey), rng)  # all ties: a random order
    idx["random"] = np.arange(len(faces))
    fractions = np.asarray(fractions, dtype=np.float64)
    curves: dict[str, dict[str, np.ndarray]] = {"deletion": {}, "insertion": {}}
    for kind, out in curves.items():
        for name, rank in ranks.items():
            g, b, t = grey[idx[name]], blurred[idx[name]], target[idx[name]]
            images = _perturbed(g, b, rank, fractions, insert=kind == "insertion")
            logits = predict_logits(model, torch.from_numpy(images.reshape(-1, *grey.shape[1:])), input_size)
            probs = torch.softmax(logits, 1).numpy().reshape(len(g), len(fractions), -1)
            out[name] = probs[np.arange(len(g)), :, t]
    auc = {k: {name: np.trapezoid(c, fractions, axis=1) for name, c in v.items()} for k, v in curves.items()}
    rows = {}
    for m in maps:
        baseline = {k: auc[k]["random"][idx[m]] for k in auc}
        gains = {"deletion": baseline["deletion"] - auc["deletion"][m],  # a faster fall is better
                 "insertion": auc["insertion"][m] - baseline["insertion"]}  # a faster rise is better
        lows, highs = mean_interval(np.stack(list(gains.values()), 1), n_boot, rng)
        row: dict = {"faces": len(idx[m])}
        for (kind, g), low, high in zip(gains.items(), lows, highs):
            row |= {f"{kind} AUC": auc[kind][m].mean(), f"random {kind} AUC": baseline[kind].mean(),
                    f"{kind} gain": g.mean(), f"{kind} gain low": float(low), f"{kind} gain high": float(high),
                    f"{kind} better": bool(low > 0)}
        rows[m] = row
    del idx["random"]
    return Faithfulness(fractions, curves, idx, pd.DataFrame(rows).T.infer_objects())


# ------------------------------------------------------------------------------------------ the page's one call


@dataclass
class SaliencyAnswer:
    """What Q4's page shows: what covering each landmark region costs (the answer), the attribution maps with their
    sanity check, where they fall among the regions against a randomised network, and how faithful they are."""

    faces: np.ndarray  # (N, 48, 48) uint8 explained faces (correctly classified validation faces), ordered by class
    labels: np.ndarray  # (N,) their classes
    probs: np.ndarray  # (N,) the model's probability of each face's class
    explained: Explained
    sanity: pd.DataFrame  # sanity_table()
    flagged: list[str]  # methods that fail the sanity check
    points: np.ndarray  # (N, 68, 2) landmarks in the 48-px frame
    found: np.ndarray  # (N,) the detector found the face (else its regions are not trusted: left out)
    regions: dict[str, np.ndarray]  # {region: (N, 48, 48) bool}, a partition of each frame
    findings: RegionFindings
    effects: pd.DataFrame  # findings.class_effects()
    faithfulness: Faithfulness
    occlusion: object  # q4_occlusion.Occlusion
    top: pd.DataFrame  # per class, then all classes: the costliest region to cover beyond its control, ties, clear
    example: str | None  # the class whose clearest single costliest region costs the most (the strip's class)
    agreement: pd.DataFrame  # q4_occlusion.attribution_agreement()
    matches: pd.DataFrame  # per voting method: classes it names a region for, matched, chance, the one region it
    # names for every class ("always", "" if none)
    grid: np.ndarray  # one face per class that every method explains (its surest), indices into faces
    strip: np.ndarray  # (2, 6, 48, 48) in [0, 1]: one face of `example` intact then each region covered; below, blank
    # then each control patch covered
    strip_row: int  # that face's row in occlusion's arrays
    empty_maps: pd.DataFrame  # per one-pass method, faces with landmarks: all-zero maps (either network), on the
    # trained network, and the classes whose maps are all zero
    aligned: dict  # aligned_class_means() of the saliency maps


def saliency_answer(model: nn.Module, images: np.ndarray, labels: np.ndarray, logits, input_size: int = 48,
                    faces_per_class: int = FACES_PER_CLASS, faithfulness_faces: int = 64, costly_per_class: int = 1,
                    seed: int = 0) -> SaliencyAnswer:
    """Q4 on the validation faces ``images`` (uint8 (N, 48, 48)), ``labels`` and the model's ``logits`` on them."""
    import pandas as pd

    from fer_lib.data.landmarks import face_landmarks
    from fer_lib.data.regions import landmark_regions

    probs = torch.softmax(torch.as_tensor(logits).float(), 1).numpy()
    idx = explained_faces(probs, labels, faces_per_class, seed)  # ordered by class
    faces, y = images[idx], np.asarray(labels)[idx]
    # SmoothGrad and Integrated Gradients cost 50-64 backward passes a face on 7 networks: a subset of the same draw
    costly = np.flatnonzero(np.isin(idx, explained_faces(probs, labels, costly_per_class, seed)))
    ex = explain(model, faces, y, input_size, subsets={m: costly for m in COSTLY}, seed=seed)
    sanity = sanity_table(ex, seed=seed)
    flagged = insensitive_methods(sanity)
    points, found = face_landmarks(faces)
    regions = landmark_regions(points)
    one_pass = [m for m in METHODS if m not in COSTLY]  # the costly methods explain too few faces for region rows
    findings = region_findings(ex, regions, y, found, flagged, seed=seed, methods=one_pass)
    pick = np.sort(np.random.default_rng(seed).permutation(len(idx))[:faithfulness_faces])
    on = {m: ex.faces[m] if m in COSTLY else pick for m in METHODS}  # the faces each method's curves use
    every = np.unique(np.concatenate(list(on.values())))
    faith = faithfulness(model, faces[every], y[every], {m: ex.maps[m][np.searchsorted(ex.faces[m], on[m])]
                                                         for m in METHODS}, input_size,
                         subsets={m: np.searchsorted(every, on[m]) for m in METHODS}, seed=seed)
    occ = occlusion(model, faces, y, regions, found, input_size, seed=seed)
    top = occ.top(seed=seed)
    agreement = attribution_agreement(top, findings.by_class, findings.voters, findings.area)
    matches = {}
    for m in [m for m in findings.voters if m in agreement and agreement[m].notna().any()]:
        said = agreement[m].dropna()
        matches[m] = {"classes": len(said), "matched": int(agreement.loc[said.index, f"{m} agrees"].sum()),
                      "chance": agreement.loc[said.index, "chance"].sum(),
                      "always": said.iloc[0] if said.nunique() == 1 and len(said) > 2 else ""}

    classes = top.drop(index=ALL)
    clear = classes[classes["clear"].astype(bool)]
    alone = clear[clear["tied"].map(len) == 0]
    pool = alone if len(alone) else clear
    example = pool["effect"].idxmax() if len(pool) else None
    strip_class = CLASS_NAMES.index(example) if example else int(occ.labels[0])
    rows = np.flatnonzero(occ.labels == strip_class)
    k = rows[np.argmax(occ.intact[rows])]
    i = occ.index[k]
    grey = faces[i:i + 1].astype(np.float32) / 255.0
    own = np.stack([regions[r][i] for r in OCCLUDED])
    moved = np.stack([m[0] for m in controls({r: m[i:i + 1] for r, m in regions.items()}).values()])
    masks = np.concatenate([np.zeros_like(own[:1]), own, np.zeros_like(own[:1]), moved])  # (12, H, W)
    strip = np.where(masks, fill(grey)[0], grey[0]).reshape(2, len(OCCLUDED) + 1, *grey.shape[1:])

    grid = np.array([costly[y[costly] == c][np.argmax(probs[idx[costly[y[costly] == c]], c])]
                     for c in np.unique(y[costly])])  # per class, the surest of the faces every method explains
    flat = {m: [v.reshape(len(v), -1).max(1) == 0 for v in (ex.maps[m], ex.random_maps[m])] for m in one_pass}
    empty = {m: {"either network": int((t | r)[found].sum()), "trained": int(t[found].sum()),
                 "classes all empty": [CLASS_NAMES[c] for c in np.unique(y[found]) if (t | r)[found & (y == c)].all()]}
             for m, (t, r) in flat.items()}
    return SaliencyAnswer(faces, y, probs[idx, y], ex, sanity, flagged, points, found, regions, findings,
                          findings.class_effects(), faith, occ, top, example, agreement,
                          pd.DataFrame.from_dict(matches, orient="index"), grid, strip, int(k),
                          pd.DataFrame.from_dict(empty, orient="index"),
                          aligned_class_means(faces, ex.maps["saliency"], ex.random_maps["saliency"], points, y, found))


def aligned_class_means(images: np.ndarray, maps: np.ndarray, random_maps: np.ndarray, points: np.ndarray,
                        labels: np.ndarray, found: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class averages over the faces with landmarks, each face first warped onto the mean landmark shape (the
    affine map that fits its 68 points to the mean points best, OpenCV), so that eyes fall on eyes before averaging:
    {"shape": (68, 2), "classes": (C,) class indices, "faces" (C,) faces averaged, "face", "map", "random map":
    (C, 48, 48) the mean grey face in [0, 1] and the mean trained and randomised network's maps}."""
    import cv2

    shape = points[found].mean(0).astype(np.float32)
    classes = [c for c in np.unique(labels[found]) if (found & (labels == c)).sum() >= MIN_FACES]

    fits = {i: cv2.estimateAffine2D(points[i].astype(np.float32), shape, method=cv2.LMEDS)[0]
            for i in np.flatnonzero(found)}

    def warped(values: np.ndarray, i: int) -> np.ndarray:
        return cv2.warpAffine(values.astype(np.float32), fits[i], values.shape[::-1], flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)  # what moves in from outside: the frame's edge

    out = {"shape": shape, "classes": np.array(classes, dtype=int),
           "faces": np.array([(found & (labels == c)).sum() for c in classes], dtype=int)}
    for key, values in (("face", images / 255.0), ("map", maps), ("random map", random_maps)):
        out[key] = np.stack([np.mean([warped(values[i], i) for i in np.flatnonzero(found & (labels == c))], 0)
                             for c in classes]) if classes else np.zeros((0, *images.shape[1:]))
    return out
