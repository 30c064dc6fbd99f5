"""Q4: attribution maps (Captum) of the grey 48x48 face, the Adebayo et al. randomisation check, and where the
maps fall among each face's landmark regions against the randomised network; :func:`saliency_answer` is the page's
call. Maps are taken on a private copy of the model; its parameters, mode and hooks and torch's global random state
are left untouched."""
from __future__ import annotations

import copy
import types
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from torch import nn

from fer_lib import CLASS_NAMES
from fer_lib.data.regions import LANDMARK_REGIONS, region_shares
from fer_lib.model.network import preprocess
from fer_lib.questions import q4_occlusion

SMOOTHGRAD_SAMPLES = 50  # noisy copies averaged per face (Smilkov et al. 2017 use 50; fewer leave speckle)
SMOOTHGRAD_NOISE = 0.15  # noise std on the [0, 1] grey scale (Smilkov et al. suggest 10-20% of the range)
IG_STEPS = 64  # steps along the path from the black face (Captum's Gauss-Legendre rule)
GRADCAM_LAYER = "layer3"  # layer4's map is the coarsest (2x2 at 48 px input); layer3 still separates eyes from mouth
COSTLY = ("SmoothGrad", "Integrated Gradients")  # 50 and 64 backward passes per face: they explain fewer faces
FACES_PER_CLASS = 80  # correctly classified validation faces with landmarks per class behind the region numbers
SANITY_PER_CLASS = 10  # of those, faces per class down the whole randomisation cascade (7 networks, not 2)
DRAW = 1.7  # faces looked at per face wanted: the detector finds about 2 in 3 (landmark fits are cached)
SANITY_THRESHOLD = 0.5  # a method whose maps still correlate above this once layer3 is random is flagged
FLAG_STAGE = "layer3"  # the cascade step at which the threshold is read (fc, layer4 and layer3 random)


def model_device(model: nn.Module) -> torch.device:
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
    return self.relu_out(self.bn2(self.conv2(out)) + identity)


def explainable_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of a torchvision ResNet whose ReLUs are separate, non-in-place modules (BasicBlock calls one
    in-place ReLU twice, which breaks the module backward hooks of guided backpropagation)."""
    from torchvision.models.resnet import BasicBlock

    twin = copy.deepcopy(model).eval()
    twin.relu = nn.ReLU()
    for module in twin.modules():
        if isinstance(module, BasicBlock):
            module.relu, module.relu_out = nn.ReLU(), nn.ReLU()
            module.forward = types.MethodType(_block_forward, module)
    return twin


class GreyInput(nn.Module):
    """``net`` behind its own (differentiable) preprocessing: grey faces (B, 1, 48, 48) in [0, 1] -> logits (B, 7),
    so attributions are taken with respect to the one grey channel."""

    def __init__(self, net: nn.Module, input_size: int):
        super().__init__()
        self.net, self.input_size = net, input_size

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        return self.net(preprocess(grey[:, 0], self.input_size))


def attribution_maps(method: str, model: nn.Module, faces, target, input_size: int = 48,
                     samples: int = SMOOTHGRAD_SAMPLES, steps: int = IG_STEPS) -> np.ndarray:
    """``method``'s maps of uint8 ``faces`` (B, 48, 48) for classes ``target`` (Captum, on an
    :func:`explainable_copy`): |attribution| over each map's maximum, (B, 48, 48) in [0, 1]. SmoothGrad's noise
    comes from a private generator state seeded with 0: the same call gives the same maps."""
    attr = q4_occlusion.captum_attr()
    device = model_device(model)
    net = GreyInput(explainable_copy(model), input_size).to(device)
    x = torch.as_tensor(np.asarray(faces)).float().div(255).unsqueeze(1).to(device)
    target = torch.as_tensor(target, device=device).expand(len(x))
    cam = attr.LayerGradCam(net, net.net.get_submodule(GRADCAM_LAYER))
    chunk, attribute = {  # faces per pass: about 128 images through the network at once
        "saliency": (64, lambda xb, tb: attr.Saliency(net).attribute(xb, target=tb, abs=True)),
        "SmoothGrad": (max(1, 128 // samples), lambda xb, tb: attr.NoiseTunnel(attr.Saliency(net)).attribute(
            xb, nt_type="smoothgrad", nt_samples=samples, stdevs=SMOOTHGRAD_NOISE, target=tb, abs=True)),
        "Integrated Gradients": (2, lambda xb, tb: attr.IntegratedGradients(net).attribute(  # from a black face
            xb, baselines=torch.zeros_like(xb), target=tb, n_steps=steps, internal_batch_size=128)),
        "Grad-CAM": (64, lambda xb, tb: attr.LayerAttribution.interpolate(
            cam.attribute(xb, target=tb, relu_attributions=True), tuple(xb.shape[-2:]), interpolate_mode="bilinear")),
        "guided backprop": (64, lambda xb, tb: attr.GuidedBackprop(net).attribute(xb, target=tb)),
    }[method]
    out = [np.zeros((0, *x.shape[-2:]), dtype=np.float32)]
    with seeded(device, 0), warnings.catch_warnings():  # Captum announces its temporary ReLU hooks (on our copy)
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        for i in range(0, len(x), chunk):
            maps = attribute(x[i:i + chunk].clone().requires_grad_(), target[i:i + chunk]).detach().abs().amax(1)
            out.append((maps / maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)).cpu().numpy())
    return np.concatenate(out)


# Simonyan et al. 2013 (|d logit / d grey pixel|); Smilkov et al. 2017 (saliency averaged over noisy copies);
# Sundararajan et al. 2017; Selvaraju et al. 2017 (on GRADCAM_LAYER, upsampled); Springenberg et al. 2015
METHODS = {m: partial(attribution_maps, m)
           for m in ("saliency", "SmoothGrad", "Integrated Gradients", "Grad-CAM", "guided backprop")}


def explained_faces(probs: np.ndarray, labels: np.ndarray, per_class: int = FACES_PER_CLASS, seed: int = 0,
                    among: np.ndarray | None = None) -> np.ndarray:
    """Indices of up to ``per_class`` correctly classified faces per class (of those ``among`` marks, if given),
    drawn at random (seeded), ordered by class: neither the model's surest faces nor its hardest. A smaller
    ``per_class`` draws a subset of a larger's."""
    rng = np.random.default_rng(seed)
    correct = (probs.argmax(1) == labels) & (True if among is None else np.asarray(among, bool))
    return np.concatenate([np.sort(rng.permutation(np.flatnonzero(correct & (labels == c)))[:per_class])
                           for c in range(probs.shape[1])]).astype(np.int64)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps a[i], b[i] (B, H, W) -> (B,); nan for a constant map."""
    from scipy.stats import rankdata

    ra, rb = (rankdata(m.reshape(len(m), -1), axis=1) for m in (a, b))
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
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
    for module in (m for name in names for m in model.get_submodule(name).modules()):
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
    re-initialised from the top down, one stage at a time (as :func:`randomised_copy` with ``seed``), and each face's
    maps are compared with the trained model's. ``subsets``: per method, the faces it explains (default: all)."""
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


def sanity_table(explained: Explained, seed: int = 0) -> pd.DataFrame:
    """Index (method, step): the mean rank correlation with the trained maps ("rho"), its 95% bootstrap interval
    over faces ("low", "high") and the number of faces."""
    rng = np.random.default_rng(seed)
    rows = {}
    for m, rho in explained.rho.items():
        low, high = q4_occlusion.mean_interval(rho.T, rng=rng)  # (steps,) each
        for s, stage in enumerate(explained.stages):
            rows[(m, stage)] = {"rho": float(_nanmean(rho[s], 0)), "low": low[s], "high": high[s],
                                "faces": rho.shape[1]}
    return pd.DataFrame(rows).T.astype({"faces": int}).rename_axis(["method", "randomised down to"])


# ------------------------------------------------------------------------------------------ region findings


@dataclass
class RegionFindings:
    """Where each method's maps fall among each face's landmark regions: the share of a map's mass in each region
    minus the same method's on the fully randomised network on the same faces (same architecture, input and centre
    bias, nothing learned). Only faces with landmarks whose maps hold mass on both networks count (Grad-CAM's ReLU can
    leave a map all zero)."""

    vs_random: pd.DataFrame  # (method, region): difference, low, high (95% bootstrap over faces), sign, faces
    by_class: pd.DataFrame  # (class, method, region): difference, faces; classes with at least MIN_FACES faces
    area: dict[str, float]  # region -> mean share of the frame it covers
    voters: list[str]  # the methods that pass the sanity check
    empty: dict[str, pd.DataFrame]  # "trained"/"randomised" -> faces with an all-zero map (class x method)


def _frame(rows: dict[tuple, dict], names: list[str], columns: list[str]) -> pd.DataFrame:
    index = pd.MultiIndex.from_tuples(list(rows), names=names)  # three empty levels when there are no rows
    return pd.DataFrame(list(rows.values()), index=index, columns=columns).astype(float).astype({"faces": int})


def region_findings(explained: Explained, regions: dict[str, np.ndarray], labels: np.ndarray, found: np.ndarray,
                    flagged=(), seed: int = 0, methods=None) -> RegionFindings:
    """Findings from :func:`explain`'s maps of ``methods`` (default: all explained), the regions of every face given
    to it ({region: (N, H, W)}), their labels (N,) and whether each face's landmarks were found (N,)."""
    labels, found = np.asarray(labels), np.asarray(found, dtype=bool)
    rng = np.random.default_rng(seed)
    pooled, by_class, empty = {}, {}, {"trained": {}, "randomised": {}}
    methods = [m for m in explained.faces if methods is None or m in set(methods)]
    for m in methods:
        keep = found[explained.faces[m]]
        idx = explained.faces[m][keep]
        trained, randomised = (np.stack(list(region_shares(v[keep], {r: regions[r][idx] for r in LANDMARK_REGIONS})
                                             .values()), 1) for v in (explained.maps[m], explained.random_maps[m]))
        diff = trained - randomised
        for net, shares in (("trained", trained), ("randomised", randomised)):
            empty[net][m] = np.bincount(labels[idx][~np.isfinite(shares).all(1)], minlength=len(CLASS_NAMES))
        counted = np.isfinite(diff).all(1)  # an all-zero map has no shares
        diff, y = diff[counted], labels[idx][counted]
        low, high = q4_occlusion.mean_interval(diff, rng=rng)
        for j, r in enumerate(LANDMARK_REGIONS):
            pooled[(m, r)] = {"difference": _nanmean(diff[:, j], 0), "low": low[j], "high": high[j],
                              "faces": len(diff)}
        for c in [c for c in np.unique(y) if (y == c).sum() >= q4_occlusion.MIN_FACES]:
            by_class |= {(CLASS_NAMES[c], m, r): {"difference": v, "faces": (y == c).sum()}
                         for r, v in zip(LANDMARK_REGIONS, diff[y == c].mean(0))}
    vs_random = _frame(pooled, ["method", "region"], ["difference", "low", "high", "faces"])
    vs_random.insert(3, "sign", q4_occlusion.interval_sign(vs_random["low"], vs_random["high"]))
    area = {r: float(regions[r][found].mean()) if found.any() else np.nan for r in LANDMARK_REGIONS}
    return RegionFindings(vs_random, _frame(by_class, ["class", "method", "region"], ["difference", "faces"]), area,
                          [m for m in methods if m not in set(flagged)],
                          {net: pd.DataFrame(e, index=CLASS_NAMES, columns=methods) for net, e in empty.items()})


# ------------------------------------------------------------------------------------------ the page's one call


@dataclass
class SaliencyAnswer:
    """What Q4's page shows: what covering each landmark region costs (the answer), the attribution maps with their
    sanity check, and where they fall among the regions against a randomised network."""

    faces: np.ndarray  # (N, 48, 48) uint8 explained faces (correctly classified validation faces), ordered by class
    labels: np.ndarray  # (N,) their classes
    probs: np.ndarray  # (N,) the model's probability of each face's class
    explained: Explained  # the randomisation cascade, on a subset of the faces (sanity_per_class)
    sanity: pd.DataFrame  # sanity_table()
    flagged: list[str]  # methods that fail the sanity check
    found: np.ndarray  # (N,) the detector found the face (else its regions are not trusted: left out)
    regions: dict[str, np.ndarray]  # {region: (N, 48, 48) bool}, a partition of each frame
    findings: RegionFindings
    occlusion: q4_occlusion.Occlusion
    top: pd.DataFrame  # Occlusion.top()
    example: str | None  # the class whose clearest single costliest region costs the most
    agreement: pd.DataFrame  # q4_occlusion.attribution_agreement()
    matches: pd.DataFrame  # per voting method: classes it names a region for, matched, chance, the one region it
    # names for every class ("always", "" if none)
    grid: np.ndarray  # one face per class that every method explains (its surest), indices into faces
    aligned: dict  # aligned_class_means() of the saliency maps
    drawn: pd.DataFrame  # per class: correctly classified, looked at, landmarks found, explained, down the cascade


def saliency_answer(model: nn.Module, images: np.ndarray, labels: np.ndarray, logits, input_size: int = 48,
                    faces_per_class: int = FACES_PER_CLASS, costly_per_class: int = 1, seed: int = 0,
                    sanity_per_class: int = SANITY_PER_CLASS, smoothgrad_samples: int = SMOOTHGRAD_SAMPLES,
                    ig_steps: int = IG_STEPS) -> SaliencyAnswer:
    """Q4 on the validation faces ``images`` (uint8 (N, 48, 48)), ``labels`` and the model's ``logits`` on them; the
    faces are drawn among the correctly classified ones whose landmarks the detector finds."""
    methods = {m: partial(attribution_maps, m, samples=smoothgrad_samples, steps=ig_steps) for m in METHODS}
    from fer_lib.core.io import default_cache_dir
    from fer_lib.data.landmarks import face_landmarks
    from fer_lib.data.regions import landmark_regions

    probs, labels = torch.softmax(torch.as_tensor(logits).float(), 1).numpy(), np.asarray(labels)
    looked = explained_faces(probs, labels, int(np.ceil(DRAW * faces_per_class)), seed)
    has_landmarks = np.zeros(len(labels), bool)
    has_landmarks[looked] = face_landmarks(images[looked], cache_dir=default_cache_dir())[1]
    among = has_landmarks if has_landmarks.any() else None  # none found (no faces?): drawn anyway, regions left out
    idx = explained_faces(probs, labels, faces_per_class, seed, among)  # ordered by class
    faces, y = images[idx], labels[idx]
    points, found = face_landmarks(faces, cache_dir=default_cache_dir())
    costly, checked = (np.flatnonzero(np.isin(idx, explained_faces(probs, labels, n, seed, among)))
                       for n in (costly_per_class, sanity_per_class))  # subsets of the same draw
    # the cascade (7 networks; SmoothGrad and Integrated Gradients cost 50-64 backward passes a face) on subsets
    ex = explain(model, faces, y, input_size, methods, {m: costly if m in COSTLY else checked for m in METHODS}, seed)
    sanity = sanity_table(ex, seed=seed)
    flagged = [m for m in METHODS if sanity.loc[(m, FLAG_STAGE), "rho"] > SANITY_THRESHOLD]
    regions = landmark_regions(points)
    one_pass = [m for m in METHODS if m not in COSTLY]  # the costly methods explain too few faces for region rows
    randomised = randomised_copy(model, seed)  # the cascade's last network
    every = Explained({m: np.arange(len(idx)) for m in one_pass},
                      *({m: METHODS[m](net, faces, y, input_size) for m in one_pass} for net in (model, randomised)),
                      {}, ex.stages)
    findings = region_findings(every, regions, y, found, flagged, seed=seed, methods=one_pass)
    occ = q4_occlusion.occlusion(model, faces, y, regions, found, input_size, seed=seed)
    top = occ.top(seed=seed)
    agreement = q4_occlusion.attribution_agreement(top, findings.by_class, findings.voters, findings.area)
    matches = {m: {"classes": len(said), "matched": int(agreement.loc[said.index, f"{m} agrees"].sum()),
                   "chance": agreement.loc[said.index, "chance"].sum(),
                   "always": said.iloc[0] if said.nunique() == 1 and len(said) > 2 else ""}
               for m in findings.voters if m in agreement for said in [agreement[m].dropna()] if len(said)}
    count = partial(np.bincount, minlength=probs.shape[1])
    drawn = pd.DataFrame({"correctly classified": count(labels[probs.argmax(1) == labels]), "looked at":
                          count(labels[looked]), "landmarks found": count(labels[has_landmarks]), "explained":
                          count(y[found]), "down the cascade": count(y[checked])}, index=CLASS_NAMES)

    clear = top.drop(index=q4_occlusion.ALL)[lambda t: t["clear"]]  # the example: a single clear part, else a tie
    pool = clear[clear["tied"].map(len) == 0] if (clear["tied"].map(len) == 0).any() else clear
    grid = np.array([costly[y[costly] == c][np.argmax(probs[idx[costly[y[costly] == c]], c])]
                     for c in np.unique(y[costly])])  # per class, the surest of the faces every method explains
    return SaliencyAnswer(faces, y, probs[idx, y], ex, sanity, flagged, found, regions, findings, occ, top,
                          pool["effect"].idxmax() if len(pool) else None, agreement,
                          pd.DataFrame.from_dict(matches, orient="index"), grid, aligned_class_means(
                              faces, every.maps["saliency"], every.random_maps["saliency"], points, y, found), drawn)


def aligned_class_means(images: np.ndarray, maps: np.ndarray, random_maps: np.ndarray, points: np.ndarray,
                        labels: np.ndarray, found: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class averages over the faces with landmarks, each face first warped onto the mean landmark shape (the
    affine map that fits its 68 points to the mean points best, OpenCV), so that eyes fall on eyes before averaging:
    {"shape": (68, 2), "classes": (C,) class indices, "faces" (C,) faces averaged, "face", "map", "random map":
    (C, 48, 48) the mean grey face in [0, 1] and the mean trained and randomised network's maps}."""
    import cv2

    shape = points[found].mean(0).astype(np.float32)
    classes = [c for c in np.unique(labels[found]) if (found & (labels == c)).sum() >= q4_occlusion.MIN_FACES]
    fits = {i: cv2.estimateAffine2D(points[i].astype(np.float32), shape, method=cv2.LMEDS)[0]
            for i in np.flatnonzero(found)}
    out = {"shape": shape, "classes": np.array(classes, dtype=int),
           "faces": np.array([(found & (labels == c)).sum() for c in classes], dtype=int)}
    for key, values in (("face", images / 255.0), ("map", maps), ("random map", random_maps)):  # edges replicated
        out[key] = np.stack([np.mean([cv2.warpAffine(values[i].astype(np.float32), fits[i], values.shape[:0:-1],
                                                     flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                                      for i in np.flatnonzero(found & (labels == c))], 0)
                             for c in classes]) if classes else np.zeros((0, *images.shape[1:]))
    return out
