"""Q4: attributions (Captum) with respect to the grey face, where they fall among each face's own landmark
regions against controls, whether they are faithful (deletion and insertion), and the Adebayo et al. sanity check.

Every method explains the grey 48x48 face the model sees before resizing and ImageNet normalisation (the three
normalised channels differ, so a map per channel would be three different maps): it returns maps (B, 48, 48) in
[0, 1] (absolute attribution divided by each map's maximum). It runs on a private copy of the model, on the
model's device (inputs are moved there; maps come back as CPU numpy arrays), and never changes the model's
parameters, buffers, mode or hooks, nor torch's global random state.

torchvision's BasicBlock calls one in-place ``ReLU`` module twice. Module backward hooks (which
Captum's guided backpropagation uses) then see one module firing twice per pass, and in-place ops
clobber the tensors the hooks hold. :func:`explainable_copy` gives every ReLU call its own
non-in-place module; the copy computes exactly the same function.
"""
from __future__ import annotations

import copy
import types
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fer_lib import CLASS_NAMES
from fer_lib.data.regions import (
    LANDMARK_REGIONS,
    REGION_LABELS,
    region_area,
    region_shares,
)

if TYPE_CHECKING:
    import pandas as pd

SMOOTHGRAD_SAMPLES = 8  # noisy copies averaged per face (Smilkov et al. used up to 50; 8 keeps the page fast)
SMOOTHGRAD_NOISE = 0.15  # noise std on the [0, 1] grey scale (Smilkov et al. suggest 10-20% of the range)
IG_STEPS = 16  # Riemann steps along the path from the black face
GRADCAM_LAYER = "layer3"  # layer4's map is the coarsest (2x2 at 48 px input); layer3 still separates eyes from mouth
SANITY_THRESHOLD = 0.5  # a method whose maps still correlate above this once layer3 is random is flagged
FACES_PER_CLASS = 30  # correctly classified validation faces per class behind the region findings
FAITHFULNESS_FACES = 64  # of those, faces behind the deletion and insertion curves
BOOTSTRAP = 2000  # resamples of the faces behind every 95% interval
MIN_FACES = 5  # a class with fewer faces gets no region verdict
# deletion / insertion: shares of the 48x48 pixels removed (or revealed), denser where the curves move most
FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
BLUR_SIGMA = 3.0  # px: a removed pixel takes its value from the face blurred this much (edges gone, shading kept)
FRAME = 48


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live: code that runs a model builds its inputs there."""
    return next(model.parameters()).device


@contextmanager
def quiet_captum_import():
    """Captum imports tqdm.auto, which warns in a notebook without ipywidgets; its bars are not used here."""
    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        yield


_quiet_captum_import = quiet_captum_import  # the name Q5 imports today


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


def _to_maps(attr: torch.Tensor) -> np.ndarray:
    """(B, 1, H, W) attributions -> (B, H, W) in [0, 1]: |a|, divided by each map's maximum."""
    maps = attr.detach().float().abs().amax(dim=1)
    peak = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / peak).cpu().numpy()


def _chunked(attribute, x: torch.Tensor, target, chunk: int) -> np.ndarray:
    """Run ``attribute(x, target) -> (b, H, W)`` over chunks of the batch, on x's device."""
    target = torch.as_tensor(target, device=x.device).expand(len(x))
    if len(x) == 0:
        return np.zeros((0, *x.shape[-2:]), dtype=np.float32)
    return np.concatenate([attribute(x[i:i + chunk], target[i:i + chunk]) for i in range(0, len(x), chunk)])


def _setup(model: nn.Module, faces, input_size: int) -> tuple[GreyInput, torch.Tensor]:
    device = model_device(model)
    return GreyInput(explainable_copy(model), input_size).to(device), grey_faces(faces, device)


def saliency(model: nn.Module, faces, target, input_size: int = 48) -> np.ndarray:
    """Simonyan et al. 2013: |d logit_target / d grey pixel|."""
    with quiet_captum_import():
        from captum.attr import Saliency

    net, x = _setup(model, faces, input_size)
    return _chunked(lambda xb, tb: _to_maps(Saliency(net).attribute(xb.clone().requires_grad_(), target=tb, abs=True)),
                    x, target, 64)


def smoothgrad(model: nn.Module, faces, target, input_size: int = 48, samples: int = SMOOTHGRAD_SAMPLES,
               noise: float = SMOOTHGRAD_NOISE, seed: int = 0) -> np.ndarray:
    """Smilkov et al. 2017: saliency averaged over noisy copies (noise: std on the [0, 1] grey scale).

    The noise is drawn from a private, seeded generator state: the same call gives the same maps.
    """
    with quiet_captum_import():
        from captum.attr import NoiseTunnel, Saliency

    net, x = _setup(model, faces, input_size)
    tunnel = NoiseTunnel(Saliency(net))
    with seeded(model_device(model), seed):
        return _chunked(lambda xb, tb: _to_maps(tunnel.attribute(
            xb.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=samples, stdevs=noise, target=tb, abs=True)),
            x, target, max(1, 128 // samples))  # 128 noisy faces per pass


def integrated_gradients(model: nn.Module, faces, target, input_size: int = 48, steps: int = IG_STEPS) -> np.ndarray:
    """Sundararajan et al. 2017, from a black face (grey 0)."""
    with quiet_captum_import():
        from captum.attr import IntegratedGradients

    net, x = _setup(model, faces, input_size)
    ig = IntegratedGradients(net)
    return _chunked(lambda xb, tb: _to_maps(ig.attribute(xb, baselines=torch.zeros_like(xb), target=tb, n_steps=steps,
                                                         internal_batch_size=128)), x, target, 128 // steps or 1)


def grad_cam(model: nn.Module, faces, target, input_size: int = 48, layer: str = GRADCAM_LAYER) -> np.ndarray:
    """Selvaraju et al. 2017 on ``layer``, upsampled bilinearly to the 48x48 face."""
    with quiet_captum_import():
        from captum.attr import LayerAttribution, LayerGradCam

    net, x = _setup(model, faces, input_size)
    cam = LayerGradCam(net, net.net.get_submodule(layer))

    def attribute(xb, tb):
        a = cam.attribute(xb, target=tb, relu_attributions=True)
        return _to_maps(LayerAttribution.interpolate(a, tuple(xb.shape[-2:]), interpolate_mode="bilinear"))

    return _chunked(attribute, x, target, 64)


def guided_backprop(model: nn.Module, faces, target, input_size: int = 48) -> np.ndarray:
    """Springenberg et al. 2015: gradients with negative signals stopped at every ReLU on the way back."""
    with quiet_captum_import():
        from captum.attr import GuidedBackprop

    net, x = _setup(model, faces, input_size)
    gbp = GuidedBackprop(net)
    with warnings.catch_warnings():  # Captum announces its temporary ReLU hooks; they act on our copy only
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        return _chunked(lambda xb, tb: _to_maps(gbp.attribute(xb.clone().requires_grad_(), target=tb)), x, target, 64)


METHODS = {"saliency": saliency, "SmoothGrad": smoothgrad, "Integrated Gradients": integrated_gradients,
           "Grad-CAM": grad_cam, "guided backprop": guided_backprop}


def attribution_maps(model: nn.Module, faces, target, input_size: int = 48, methods: dict | None = None
                     ) -> dict[str, np.ndarray]:
    """{method name: maps (B, 48, 48) in [0, 1]} for every method, on the same faces and targets."""
    return {name: fn(model, faces, target, input_size) for name, fn in (methods or METHODS).items()}


def method_notes(model: nn.Module, input_size: int) -> str:
    """The methods' settings as Markdown bullets, with the numbers this run uses (map sizes measured)."""
    sizes = map_sizes(model, [GRADCAM_LAYER, "layer4"], input_size)
    cam, top = ("x".join(map(str, sizes[n])) for n in (GRADCAM_LAYER, "layer4"))
    return "\n".join([
        (f"- **SmoothGrad** (Smilkov et al. 2017): saliency averaged over {SMOOTHGRAD_SAMPLES} copies of the face "
         f"with Gaussian noise (standard deviation {SMOOTHGRAD_NOISE:.0%} of the grey range), which removes much "
         "of the gradient's pixel-level noise;"),
        (f"- **Integrated Gradients** (Sundararajan et al. 2017): gradients integrated in {IG_STEPS} steps along a "
         "straight path from a black face;"),
        (f"- **Grad-CAM** (Selvaraju et al. 2017) on the third residual stage (`{GRADCAM_LAYER}`), whose map is "
         f"{cam} at this run's {input_size}x{input_size} input (the last stage's is {top}), upsampled to the face;"),
        ("- **guided backpropagation** (Springenberg et al. 2015): gradients with negative signals stopped at every "
         "ReLU on the way back."),
    ])


def explained_faces(probs: np.ndarray, labels: np.ndarray, per_class: int = FACES_PER_CLASS, seed: int = 0
                    ) -> np.ndarray:
    """Indices of up to ``per_class`` correctly classified faces per class, drawn at random (seeded), ordered by
    class: a sample that is neither the model's surest faces nor its hardest."""
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


# ------------------------------------------------------------------------------------------ intervals


def _interval(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 95% percentile interval of bootstrap samples along axis 0."""
    with warnings.catch_warnings():  # a column that is nan in every resample stays nan
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(samples, 2.5, axis=0), np.nanpercentile(samples, 97.5, axis=0)


def verdict(low: float, high: float) -> str:
    """"more" / "less" when the 95% interval of a difference excludes 0, else "no clear difference"."""
    return "more" if low > 0 else "less" if high < 0 else "no clear difference"


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():  # an all-zero map has nan shares; a column of nothing but nan stays nan
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _pp(x: float) -> str:
    return f"{x * 100:+.1f}"


def _capital(text: str) -> str:
    """The text with its first letter upper-case (a method's name may open a sentence)."""
    return text[:1].upper() + text[1:]


def _names(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ------------------------------------------------------------------------------------------ region findings


@dataclass
class RegionFindings:
    """Where each method's maps fall among each face's landmark regions, against two controls that carry the same
    centre bias: the same method on a randomly initialised network, and the mean over all classes.

    Shares are fractions of a map's mass (0.05 = 5 percentage points); low / high bound the 95% bootstrap interval
    over faces of the difference; verdict is "more", "less" or "no clear difference".
    """

    vs_random: pd.DataFrame  # index (method, region): trained, randomised, difference, low, high, verdict
    vs_classes: pd.DataFrame  # index (class, method, region): share, all_classes, excess, low, high, verdict
    area: dict[str, float]  # region -> mean share of the frame it covers
    faces: dict[str, int]  # class -> faces (classes with fewer than MIN_FACES have no rows in vs_classes)
    methods: list[str]
    voters: list[str]  # the methods that pass the sanity check: only they count in the summary

    def _consensus(self, verdicts: dict[str, str]) -> str | None:
        """"more" / "less" when more than half of the voters say it and none says the opposite, else None."""
        said = [verdicts[m] for m in self.voters if m in verdicts]
        for word, other in (("more", "less"), ("less", "more")):
            if said.count(word) > len(self.voters) / 2 and other not in said:
                return word
        return None

    def random_consensus(self) -> dict[str, str | None]:
        """region -> "more" / "less" / None: the voters' verdict on trained vs randomised network."""
        return {r: self._consensus(self.vs_random.xs(r, level=1)["verdict"].to_dict()) for r in LANDMARK_REGIONS}

    def class_consensus(self) -> dict[str, dict[str, str]]:
        """class -> {region: "more" / "less"} for the regions where the voters agree against the all-class mean."""
        out = {}
        for cls in dict.fromkeys(self.vs_classes.index.get_level_values(0)):
            rows = self.vs_classes.xs(cls, level=0)
            found = {r: self._consensus(rows.xs(r, level=1)["verdict"].to_dict()) for r in LANDMARK_REGIONS}
            out[cls] = {r: v for r, v in found.items() if v}
        return out

    def _agreeing(self, rows, word: str) -> list[float]:
        values = rows["difference" if "difference" in rows else "excess"]
        return sorted(float(v) for v, w in zip(values, rows["verdict"]) if w == word)

    def random_sentence(self) -> str:
        """What the trained network's maps do beyond a randomised network's, by the voters' consensus."""
        found = self.random_consensus()
        parts = []
        for word in ("more", "less"):
            regions = [r for r, v in found.items() if v == word]
            if regions:
                bits = []
                for r in regions:
                    values = self._agreeing(self.vs_random.xs(r, level=1).loc[self.voters], word)
                    bits.append(f"the {REGION_LABELS[r]} ({_spread(values)})")
                parts.append(f"{word} of their mass on {_names(bits)}")
        unclear = [REGION_LABELS[r] for r, v in found.items() if v is None]
        voters = f"the {len(self.voters)} methods that pass the sanity check"
        text = ("Against the same method on a randomly initialised network, which carries the same centre bias, "
                + (f"most of {voters} (and none of them the other way) put " + "; ".join(parts) if parts else
                   f"{voters} put no region clearly more or less of their mass"))
        if parts and unclear:
            text += f" (no clear difference for the {_names(unclear)})"
        return text + "."

    def class_sentence(self) -> str:
        """Which regions set each class apart from the mean over all classes, by the voters' consensus."""
        found = self.class_consensus()
        clear, unclear = [], []
        for cls, regions in found.items():
            if not regions:
                unclear.append(cls)
                continue
            rows = self.vs_classes.xs(cls, level=0)
            parts = []
            for word in ("more", "less"):
                bits = [f"the {REGION_LABELS[r]} ({_spread(self._agreeing(rows.xs(r, level=1).loc[self.voters], w))})"
                        for r, w in regions.items() if w == word]
                if bits:
                    parts.append(f"{word} on {_names(bits)}")
            clear.append(f"{cls}'s maps hold " + " and ".join(parts))
        few = [c for c in self.faces if c not in found] + [c for c in CLASS_NAMES if c not in self.faces]
        text = ("Against the mean map of all classes, " + "; ".join(clear) if clear else
                "Against the mean map of all classes, no class puts clearly more or less of its mass on any region")
        if unclear:
            text += f"; no clear difference for {_names(unclear)}"
        if few:
            text += f" ({_names(few)}: fewer than {MIN_FACES} correctly classified faces, no verdict)"
        return text + "."


def _spread(values: list[float]) -> str:
    """'+4.1 pp' or '+4.1 to +6.0 pp by method' for the mean differences of the methods that agree."""
    low, high = _pp(values[0]), _pp(values[-1])
    return f"{low} pp" if low == high else f"{low} to {high} pp by method"


def region_findings(maps: dict[str, np.ndarray], random_maps: dict[str, np.ndarray], regions: dict[str, np.ndarray],
                    labels: np.ndarray, flagged=(), n_boot: int = BOOTSTRAP, seed: int = 0) -> RegionFindings:
    """Findings from every method's maps (N, H, W) of the trained and the randomised network on the same faces,
    their per-face regions ({region: (N, H, W)}) and class labels (N,); ``flagged`` methods do not vote."""
    import pandas as pd

    labels = np.asarray(labels)
    methods = list(maps)
    rng = np.random.default_rng(seed)
    n = len(labels)
    paired = rng.integers(0, n, (n_boot, n))  # one resampling of the faces for every method and region
    counts = {CLASS_NAMES[c]: int((labels == c).sum()) for c in np.unique(labels)}
    kept = [c for c in np.unique(labels) if (labels == c).sum() >= MIN_FACES]
    within = {c: np.flatnonzero(labels == c)[rng.integers(0, (labels == c).sum(), (n_boot, (labels == c).sum()))]
              for c in kept}  # stratified: resample each class's faces within the class
    random_rows, class_rows = {}, {}
    for m in methods:
        trained = np.stack([region_shares(maps[m], regions)[r] for r in LANDMARK_REGIONS], 1)  # (N, R)
        randomised = np.stack([region_shares(random_maps[m], regions)[r] for r in LANDMARK_REGIONS], 1)
        diff = trained - randomised
        low, high = _interval(_nanmean(diff[paired], 1))
        mean_t, mean_r, mean_d = _nanmean(trained, 0), _nanmean(randomised, 0), _nanmean(diff, 0)
        for j, r in enumerate(LANDMARK_REGIONS):
            random_rows[(m, r)] = {"trained": mean_t[j], "randomised": mean_r[j], "difference": mean_d[j],
                                   "low": low[j], "high": high[j], "verdict": verdict(low[j], high[j])}
        if not kept:
            continue
        means = {c: _nanmean(trained[labels == c], 0) for c in kept}  # (R,) per class
        boot = {c: _nanmean(trained[within[c]], 1) for c in kept}  # (n_boot, R) per class
        baseline, boot_baseline = np.mean(list(means.values()), 0), np.mean(list(boot.values()), 0)
        for c in kept:
            low, high = _interval(boot[c] - boot_baseline)
            for j, r in enumerate(LANDMARK_REGIONS):
                class_rows[(CLASS_NAMES[c], m, r)] = {
                    "share": means[c][j], "all_classes": baseline[j], "excess": means[c][j] - baseline[j],
                    "low": low[j], "high": high[j], "verdict": verdict(low[j], high[j])}
    vs_random = pd.DataFrame(random_rows).T
    vs_random.index.names = ["method", "region"]
    columns = ["share", "all_classes", "excess", "low", "high", "verdict"]
    vs_classes = pd.DataFrame(class_rows).T if class_rows else pd.DataFrame(columns=columns)
    if class_rows:
        vs_classes.index.names = ["class", "method", "region"]
    for table in (vs_random, vs_classes):
        for col in table.columns:
            if col != "verdict":
                table[col] = table[col].astype(float)
    area = {r: float(np.mean(v)) for r, v in region_area(regions).items()}
    return RegionFindings(vs_random, vs_classes, area, counts, methods, [m for m in methods if m not in set(flagged)])


def random_table(findings: RegionFindings):
    """Regions x methods: 'trained - randomised share in pp [95% interval]', for display."""
    t = findings.vs_random
    cells = {m: {REGION_LABELS[r]: f"{_pp(t.loc[(m, r), 'difference'])} [{_pp(t.loc[(m, r), 'low'])}, "
                 f"{_pp(t.loc[(m, r), 'high'])}]" for r in LANDMARK_REGIONS} for m in findings.methods}
    import pandas as pd

    return pd.DataFrame(cells)


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
    curves: dict[str, dict[str, np.ndarray]]  # "deletion" / "insertion" -> order ("random" too) -> (N, F)
    table: pd.DataFrame  # index method: AUCs and gains over the random order, with 95% intervals
    methods: list[str]

    def faithful(self) -> dict[str, list[str]]:
        """"both" / "deletion" / "insertion" / "neither" -> methods: where the gain's interval lies above 0."""
        out: dict[str, list[str]] = {k: [] for k in ("both", "deletion", "insertion", "neither")}
        for m in self.methods:
            d, i = self.table.loc[m, "deletion gain low"] > 0, self.table.loc[m, "insertion gain low"] > 0
            out["both" if d and i else "deletion" if d else "insertion" if i else "neither"].append(m)
        return out

    def display_table(self):
        """The table as strings: AUCs, and gains with their 95% intervals."""
        import pandas as pd

        t = self.table
        def gain(m, kind):
            return (f"{t.loc[m, f'{kind} gain']:+.3f} [{t.loc[m, f'{kind} gain low']:+.3f}, "
                    f"{t.loc[m, f'{kind} gain high']:+.3f}]")

        rows = {}
        for m in self.methods:
            rows[m] = {"deletion AUC (lower is better)": f"{t.loc[m, 'deletion AUC']:.3f}",
                       "deletion gain over random": gain(m, "deletion"),
                       "insertion AUC (higher is better)": f"{t.loc[m, 'insertion AUC']:.3f}",
                       "insertion gain over random": gain(m, "insertion")}
        rows["random order"] = {"deletion AUC (lower is better)": f"{t['random deletion AUC'].iloc[0]:.3f}",
                                "deletion gain over random": "",
                                "insertion AUC (higher is better)": f"{t['random insertion AUC'].iloc[0]:.3f}",
                                "insertion gain over random": ""}
        return pd.DataFrame(rows).T

    def sentence(self) -> str:
        """Which methods order the pixels better than chance, for this model."""
        groups = self.faithful()
        t = self.table
        best = max(self.methods, key=lambda m: t.loc[m, "deletion gain"] + t.loc[m, "insertion gain"])
        parts = []
        if groups["both"]:
            parts.append(f"{_names(groups['both'])} beat{'s' if len(groups['both']) == 1 else ''} a random order on "
                         "both deletion and insertion (the 95% interval of the gain lies above zero)")
        for kind in ("deletion", "insertion"):
            if groups[kind]:
                parts.append(f"{_names(groups[kind])} only on {kind}")
        if groups["neither"]:
            parts.append(f"{_names(groups['neither'])} on neither")
        return (_capital(_names(parts)) + f". The largest combined gain is {best}'s "
                f"(deletion {t.loc[best, 'deletion gain']:+.3f}, insertion {t.loc[best, 'insertion gain']:+.3f} "
                "in area under the probability curve).")


def faithfulness(model: nn.Module, faces: np.ndarray, target, maps: dict[str, np.ndarray], input_size: int = 48,
                 fractions=FRACTIONS, sigma: float = BLUR_SIGMA, n_boot: int = BOOTSTRAP, seed: int = 0
                 ) -> Faithfulness:
    """Deletion and insertion curves of uint8 ``faces`` (N, 48, 48) for classes ``target`` (N,) in the order of
    each method's maps (N, 48, 48), and in a random order (one seeded permutation per face)."""
    import pandas as pd
    from scipy.ndimage import gaussian_filter

    from fer_lib.model.inference import predict_logits

    faces = np.asarray(faces)
    target = np.asarray(target)
    grey = faces.astype(np.float32) / 255.0
    blurred = gaussian_filter(grey, sigma=(0, sigma, sigma), mode="nearest")
    rng = np.random.default_rng(seed)
    ranks = {m: pixel_ranks(v, rng) for m, v in maps.items()}
    ranks["random"] = pixel_ranks(np.zeros_like(grey), rng)  # all ties: a random order
    fractions = np.asarray(fractions, dtype=np.float64)
    curves: dict[str, dict[str, np.ndarray]] = {"deletion": {}, "insertion": {}}
    for kind, out in curves.items():
        for name, rank in ranks.items():
            images = _perturbed(grey, blurred, rank, fractions, insert=kind == "insertion")
            logits = predict_logits(model, torch.from_numpy(images.reshape(-1, *grey.shape[1:])), input_size)
            probs = torch.softmax(logits, 1).numpy().reshape(len(grey), len(fractions), -1)
            out[name] = probs[np.arange(len(grey)), :, target]
    auc = {k: {name: np.trapezoid(c, fractions, axis=1) for name, c in v.items()} for k, v in curves.items()}
    resample = rng.integers(0, len(grey), (n_boot, len(grey)))
    rows = {}
    for m in maps:
        gains = {"deletion": auc["deletion"]["random"] - auc["deletion"][m],  # a faster fall is better
                 "insertion": auc["insertion"][m] - auc["insertion"]["random"]}  # a faster rise is better
        row = {}
        for kind, g in gains.items():
            low, high = _interval(g[resample].mean(1))
            row |= {f"{kind} AUC": auc[kind][m].mean(), f"random {kind} AUC": auc[kind]["random"].mean(),
                    f"{kind} gain": g.mean(), f"{kind} gain low": float(low), f"{kind} gain high": float(high)}
        rows[m] = row
    return Faithfulness(fractions, curves, pd.DataFrame(rows).T, list(maps))


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


def cascading_randomization(model: nn.Module, faces, target, input_size: int = 48, methods: dict | None = None,
                            seed: int = 0):
    """Adebayo et al. 2018: re-initialise layers from the top down, one stage at a time, and measure how
    much each method's maps still resemble the trained model's (mean Spearman rank correlation).

    The new weights come from a private generator state seeded with ``seed`` (the global one is untouched); the
    last step's network is :func:`randomised_copy` with the same seed. Returns a DataFrame: rows
    "randomised down to <stage>", columns methods.
    """
    import pandas as pd

    methods = methods or METHODS
    reference = {name: fn(model, faces, target, input_size) for name, fn in methods.items()}
    randomized = copy.deepcopy(model).eval()
    rows = {}
    with seeded(model_device(model), seed):
        for stage, names in RANDOMIZATION_ORDER:
            _reinitialise(randomized, names)
            rows[stage] = {}
            for name, fn in methods.items():
                rho = rank_correlation(reference[name], fn(randomized, faces, target, input_size))
                rows[stage][name] = float(np.nanmean(rho)) if np.isfinite(rho).any() else np.nan
    table = pd.DataFrame(rows).T
    table.index.name = "randomised down to"
    return table


def insensitive_methods(table, threshold: float = SANITY_THRESHOLD) -> list[str]:
    """Methods whose maps still correlate above ``threshold`` once layer4 and layer3 are random."""
    return [m for m in table.columns if table.loc["layer3", m] > threshold]


def sanity_notes(threshold: float = SANITY_THRESHOLD) -> str:
    """How the sanity check is read, with its threshold."""
    return (f"A method that reflects the model should fall toward 0; a method still above {threshold:g} once the "
            "last two residual stages are random is flagged, and does not count in the region findings below.")


def answer(regions: RegionFindings, faith: Faithfulness, flagged: list[str]) -> str:
    """The page's short answer: the sanity check's verdict, the region findings that survive their controls, and
    which methods are faithful to this model."""
    one = len(flagged) == 1
    fails = (f"{_names(flagged)} fail{'s' if one else ''} the randomisation sanity check and do{'es' if one else ''} "
             "not count. " if flagged else "Every method passes the sanity check. ")
    text = _capital(fails) + regions.random_sentence() + " " + regions.class_sentence() + " " + faith.sentence()
    good = set(faith.faithful()["both"])
    caught = [m for m in flagged if m in good]
    if caught:
        text += (f" {_capital(_names(caught))} also orders pixels well, although its maps barely depend on the learned "
                 "weights: removing a face's edges first hurts any classifier, so these curves do not replace the "
                 "sanity check.")
    return text
