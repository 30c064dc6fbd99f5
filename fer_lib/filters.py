"""Q5: what the last convolution layer's filters respond to.

A filter's *response* is its channel of ``layer4.1.bn2`` (the last convolution, ``layer4.1.conv2``,
followed by its BatchNorm, a per-channel affine map), averaged over positions: positive means the
filter fires. Three views: images made by gradient ascent on the input, the validation faces that
excite the filter most (blank or near-uniform images left out), and where on those faces the response
comes from. layer4's own map is too coarse for that (2x2 at 48 px input), so the last view is Grad-CAM
of the filter's response on the finer ``FILTER_MAP_LAYER``.

Code that runs a model builds its inputs on the model's device and returns CPU numpy arrays.
"""
from __future__ import annotations

import copy
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import CLASS_NAMES
from .explain import (
    REGION_LABELS,
    REGION_SHORT,
    _quiet_captum_import,
    face_regions,
    map_sizes,
    model_device,
    region_shares,
    top_region,
)

LAST_CONV = "layer4.1.conv2"
RESPONSE_LAYER = "layer4.1.bn2"
FILTER_MAP_LAYER = "layer2"  # 6x6 at 48 px input, 9x9 at 72: fine enough to tell eyes from mouth
N_FILTERS = 32  # filters shown (fewer when fewer are active)
TOP_K = 9  # top faces per filter
SELECTIVE_SHARE = 2 / 3  # a filter is class-selective when at least this share of its top faces share a class
MIN_PIXEL_STD = 4.0  # gray levels (of 255): a face below this is blank or near-uniform and never a "top face"


@contextmanager
def capture(model: nn.Module, layer: str):
    """Record ``layer``'s output in ``store["out"]`` during forward passes; the hook is always removed.

    The output is cloned: torchvision's BasicBlock adds the skip connection to bn2's output in place
    (``out += identity``) and applies an in-place ReLU, which would otherwise rewrite what was stored.
    """
    store: dict[str, torch.Tensor] = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.__setitem__("out", o.clone()))
    try:
        yield store
    finally:
        handle.remove()


def informative_faces(images: np.ndarray, min_std: float = MIN_PIXEL_STD) -> np.ndarray:
    """(N,) bool: faces whose pixel standard deviation reaches ``min_std`` (FER2013 has some blank images)."""
    images = np.asarray(images, dtype=np.float32)
    return images.reshape(len(images), -1).std(1) >= min_std


@torch.no_grad()
def filter_responses(model: nn.Module, images: np.ndarray, input_size: int = 48, batch_size: int = 256,
                     layer: str = RESPONSE_LAYER) -> np.ndarray:
    """Mean response (N, C) of every channel of ``layer`` for uint8 faces (N, 48, 48)."""
    from .model import preprocess

    twin = copy.deepcopy(model).eval()
    device = model_device(model)
    out = []
    with capture(twin, layer) as store:
        for start in range(0, len(images), batch_size):
            twin(preprocess(torch.as_tensor(images[start:start + batch_size]), input_size).to(device))
            out.append(store["out"].float().mean((2, 3)).cpu())
    return torch.cat(out).numpy()


def inactive_filters(responses: np.ndarray) -> np.ndarray:
    """Filters whose response is never positive on any of the faces given."""
    return np.flatnonzero(responses.max(0) <= 0)


def overview(responses: np.ndarray, valid: np.ndarray, list_up_to: int = 24) -> str:
    """Sentences on inactive filters and on the blank faces left out (inactive filters listed when few)."""
    inactive = inactive_filters(responses)
    n_filters, n_faces = responses.shape[1], len(responses)
    if len(inactive):
        listed = f": {', '.join(map(str, inactive))}" if len(inactive) <= list_up_to else ""
        first = (f"{len(inactive)} of the {n_filters} filters never respond positively on any of the {n_faces:,} "
                 f"validation faces (inactive){listed}.")
    else:
        first = (f"Every one of the {n_filters} filters responds positively on at least one of the {n_faces:,} "
                 "validation faces.")
    blank = int(len(valid) - np.sum(valid))
    rule = f"pixel standard deviation below {MIN_PIXEL_STD:g} of 255 gray levels"
    if blank:
        second = (f"{blank} of those faces {'is' if blank == 1 else 'are'} blank or near-uniform ({rule}) and never "
                  "counted among a filter's top faces.")
    else:
        second = f"None of those faces is blank or near-uniform ({rule})."
    return f"{first} {second}"


def top_faces(responses: np.ndarray, filters: np.ndarray, k: int = TOP_K,
              valid: np.ndarray | None = None) -> np.ndarray:
    """(len(filters), k) indices of the faces with the strongest response, strongest first; faces with
    ``valid`` False (blank images) are never chosen."""
    scores = responses[:, filters].astype(float)
    if valid is not None:
        scores[~np.asarray(valid)] = -np.inf
        k = min(k, int(np.sum(valid)))
    return np.argsort(-scores, axis=0, kind="stable")[:k].T


def class_mix(labels: np.ndarray, top: np.ndarray, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """(len(filters), n_classes): share of each class among each filter's top faces."""
    return np.stack([np.bincount(labels[row], minlength=n_classes) / len(row) for row in top])


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def gradient_ascent(model: nn.Module, filters: list[int] | np.ndarray, input_size: int = 48, steps: int = 120,
                    lr: float = 0.05, jitter: int = 3, blur_every: int = 4, blur_sigma: float = 0.7,
                    decay: float = 1e-3, seed: int = 0, init_noise: float = 0.8, layer: str = RESPONSE_LAYER) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (F, S, S) in [0, 1] that maximise each filter's mean response, and responses before/after.

    One grayscale image per filter is optimised with Adam, all filters in one batch. Regularisers
    keep the images from turning into high-frequency noise: random jitter (a shift of up to ``jitter``
    pixels each step), a Gaussian blur every ``blur_every`` steps, and a small L2 decay toward gray.
    The random start and jitter come from a private generator seeded with ``seed``, the same on every device.
    """
    from .model import IMAGENET_MEAN, IMAGENET_STD

    device = model_device(model)
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    filters = torch.as_tensor(np.asarray(filters), dtype=torch.long, device=device)
    g = torch.Generator().manual_seed(seed)
    # optimise a gray image in [0, 1] space (through a sigmoid), starting from gray plus visible noise:
    # from a nearly flat image some filters get no gradient at all (every path to them is cut by a ReLU)
    logits = torch.randn(len(filters), 1, input_size, input_size, generator=g) * init_noise
    logits = logits.to(device).requires_grad_()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    optimizer = torch.optim.Adam([logits], lr=lr)
    index = torch.arange(len(filters), device=device)

    def response(img: torch.Tensor, store) -> torch.Tensor:
        twin((img.expand(-1, 3, -1, -1) - mean) / std)
        return store["out"][index, filters].float().mean((1, 2))  # (F,)

    with capture(twin, layer) as store:
        with torch.no_grad():
            before = response(torch.sigmoid(logits), store).cpu().numpy()
        for step in range(steps):
            img = torch.sigmoid(logits)
            dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g))
            act = response(torch.roll(img, shifts=(dy, dx), dims=(2, 3)), store)
            loss = -act.sum() + decay * ((img - 0.5) ** 2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if blur_every and (step + 1) % blur_every == 0:
                with torch.no_grad():
                    logits.copy_(_gaussian_blur(logits, blur_sigma))
        with torch.no_grad():
            final = torch.sigmoid(logits)
            after = response(final, store).cpu().numpy()
    return final[:, 0].cpu().numpy(), before, after


def filter_maps(model: nn.Module, faces: np.ndarray, filters, input_size: int = 48, layer: str = FILTER_MAP_LAYER,
                response_layer: str = RESPONSE_LAYER, batch_size: int = 64) -> np.ndarray:
    """Where on each face a filter's response comes from: Grad-CAM on ``layer`` with the filter's mean
    response as the target, upsampled to the input size, each map scaled to [0, 1].

    ``faces``: uint8 (F, k, 48, 48), the faces of filter ``filters[i]`` in row i. Returns (F, k, S, S).
    """
    with _quiet_captum_import():
        from captum.attr import LayerAttribution, LayerGradCam

    from .model import preprocess

    faces = np.asarray(faces)
    n_filters, k = faces.shape[:2]
    device = model_device(model)
    twin = copy.deepcopy(model).eval()
    targets = torch.as_tensor(np.repeat(np.asarray(filters), k), dtype=torch.long)
    flat = torch.as_tensor(faces.reshape(-1, *faces.shape[2:]))
    out = []
    with capture(twin, response_layer) as store:
        def responses(x):
            twin(x)
            return store["out"].mean((2, 3))  # (B, C)

        cam = LayerGradCam(responses, twin.get_submodule(layer))
        for start in range(0, len(flat), batch_size):
            x = preprocess(flat[start:start + batch_size], input_size).to(device)
            a = cam.attribute(x, target=targets[start:start + batch_size].to(device), relu_attributions=True)
            a = LayerAttribution.interpolate(a, (input_size, input_size), interpolate_mode="bilinear")[:, 0].detach()
            peak = a.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
            out.append((a / peak).float().cpu())
    size = input_size
    return torch.cat(out).numpy().reshape(n_filters, k, size, size) if out else np.zeros((n_filters, k, size, size))


def pick_filters(responses: np.ndarray, labels: np.ndarray, n: int = N_FILTERS) -> np.ndarray:
    """``n`` active filters spread over the classes: round-robin over the classes, each time taking the
    filter most selective for that class (mean response on its faces minus the mean on the others).

    Taking simply the strongest responders tends to show many filters of one class.
    """
    active = np.setdiff1d(np.arange(responses.shape[1]), inactive_filters(responses))
    active_set = set(active.tolist())
    rankings = []
    for c in np.unique(labels):
        selectivity = responses[labels == c].mean(0) - responses[labels != c].mean(0)
        rankings.append([int(f) for f in np.argsort(-selectivity) if f in active_set])
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(n, len(active)):
        for ranking in rankings:
            if depth < len(ranking) and ranking[depth] not in chosen and len(chosen) < n:
                chosen.append(ranking[depth])
        depth += 1
    return np.array(chosen, dtype=np.int64)


def mix_caption(mix_row: np.ndarray, k: int = TOP_K) -> str:
    """'Surprise 8, Fear 1': how many of a filter's k top faces belong to each class, commonest first."""
    counts = np.round(mix_row * k).astype(int)
    return ", ".join(f"{CLASS_NAMES[c]} {counts[c]}" for c in np.argsort(-counts, kind="stable") if counts[c])


def _tally(counter: Counter, label=str) -> str:
    return ", ".join(f"{label(name)} {n}" for name, n in counter.most_common())


@dataclass
class FilterFindings:
    """What each shown filter responds to: class mix of its top faces, face region, gradient-ascent check."""

    filters: np.ndarray  # (F,) filter indices
    mix: np.ndarray  # (F, 7) share of each class among the filter's top faces
    k: int  # top faces per filter
    regions: list[str | None]  # per filter: the region with the most of its response map for its size
    region_ratio: np.ndarray  # (F,) that region's share of the map's mass / its share of the image
    ascent: np.ndarray  # (F,) the filter's response to its gradient-ascent image
    best_face: np.ndarray  # (F,) its response to its strongest (non-blank) real face

    @property
    def weak_ascent(self) -> np.ndarray:
        """(F,) bool: the gradient-ascent image excites the filter less than its best real face."""
        return self.ascent < self.best_face

    @property
    def selective(self) -> np.ndarray:
        """(F,) bool: at least ``SELECTIVE_SHARE`` of the top faces share a class."""
        return np.round(self.mix.max(1) * self.k) >= math.ceil(SELECTIVE_SHARE * self.k - 1e-9)

    def dominant(self) -> list[str]:
        return [CLASS_NAMES[c] for c in self.mix.argmax(1)]

    def captions(self) -> list[str]:
        """Per filter: its top faces' class mix and where its response comes from."""
        return [f"{mix_caption(row, self.k)}; {REGION_LABELS.get(r, 'no region')}"
                for row, r in zip(self.mix, self.regions)]

    def short_captions(self) -> list[str]:
        """Per filter, for small tiles: 'Happy 7/9, mouth'."""
        return [f"{CLASS_NAMES[row.argmax()]} {round(row.max() * self.k)}/{self.k}, {REGION_SHORT.get(r, 'no region')}"
                for row, r in zip(self.mix, self.regions)]

    def map_captions(self) -> list[str]:
        """Per filter: its id and the region its response comes from on its top faces, relative to the region's size."""
        return [f"{f}: {REGION_SHORT[r]} {x:.1f}x" if r else f"{f}: no response map"
                for f, r, x in zip(self.filters, self.regions, self.region_ratio)]

    def styled_table(self):
        """:meth:`table` formatted for the page (shares as percentages, responses with 2 decimals)."""
        table = self.table()
        return (table.style.format(precision=2).format("{:.0%}", subset=[f"share of top {self.k}"])
                .format("{:.1f}x", subset=["x its area"]).hide(axis="index"))

    def table(self):
        import pandas as pd

        return pd.DataFrame({"filter": self.filters, "top class": self.dominant(),
                             f"share of top {self.k}": self.mix.max(1),
                             "top faces": [mix_caption(row, self.k) for row in self.mix],
                             "response from": [REGION_LABELS.get(r, "none") for r in self.regions],
                             "x its area": self.region_ratio, "best face": self.best_face,
                             "ascent image": self.ascent,
                             "ascent below best face": np.where(self.weak_ascent, "yes", "")})

    def sentences(self) -> list[str]:
        n, need = len(self.filters), math.ceil(SELECTIVE_SHARE * self.k - 1e-9)
        sel = self.selective
        by_class = Counter(c for c, s in zip(self.dominant(), sel) if s)
        by_region = Counter(r for r in self.regions if r is not None)
        verb = "is" if sel.sum() == 1 else "are"
        lines = [f"{sel.sum()} of the {n} filters shown {verb} class-selective (at least {need} of their {self.k} top "
                 f"faces share a class)" + (f": {_tally(by_class)}." if by_class else ".")]
        if by_region:
            lines.append("Filters by the region their response comes from (the most for its size): "
                         f"{_tally(by_region, REGION_LABELS.get)}.")
        weak = self.filters[self.weak_ascent]
        lines.append(f"For {len(weak)} of the {n} filters the gradient-ascent image excites the filter less than its "
                     "best real face" + (f" (filters {', '.join(map(str, weak))})" if len(weak) else "") + ".")
        return lines

    def answer(self) -> str:
        """1-3 sentences: what the shown filters respond to."""
        n, need = len(self.filters), math.ceil(SELECTIVE_SHARE * self.k - 1e-9)
        sel = self.selective
        by_class = Counter(c for c, s in zip(self.dominant(), sel) if s)
        by_region = Counter(r for r in self.regions if r is not None)
        verb = "responds" if sel.sum() == 1 else "respond"
        first = (f"{sel.sum()} of the {n} filters shown {verb} to one expression (at least {need} of their "
                 f"{self.k} top faces share a class" + (f": {_tally(by_class)}" if by_class else "") + ").")
        if by_region:
            (top, count), *rest = by_region.most_common()
            first += (f" Their responses come mostly from the {REGION_LABELS[top]} ({count} of the {n} filters"
                      + (f"; next the {REGION_LABELS[rest[0][0]]}, {rest[0][1]}" if rest else "") + ").")
        weak = int(self.weak_ascent.sum())
        second = (f"The gradient-ascent image excites {weak} of the {n} filters less than their best real face, so "
                  "for those it is a weaker picture of what the filter wants than the faces themselves."
                  if weak else "Every gradient-ascent image excites its filter more than its best real face.")
        return first + " " + second


def filter_findings(filters, mix: np.ndarray, maps: np.ndarray, ascent_response: np.ndarray,
                    best_face_response: np.ndarray, k: int = TOP_K) -> FilterFindings:
    """Findings from the top faces' class mix (F, 7), the filters' response maps on their top faces
    (F, k, S, S) and the responses to the gradient-ascent image and to the best real face (F,)."""
    mean_maps = np.asarray(maps).mean(1)  # (F, S, S): where the response comes from on the filter's top faces
    regions = face_regions(mean_maps.shape[-1])
    area = {r: float(m.mean()) for r, m in regions.items()}
    shares = region_shares(mean_maps, regions)
    tops, ratio = [], []
    for i in range(len(mean_maps)):
        top = top_region({r: float(v[i]) for r, v in shares.items()}, area)
        tops.append(top)
        ratio.append(shares[top][i] / area[top] if top else np.nan)
    return FilterFindings(np.asarray(filters), np.asarray(mix), k, tops, np.array(ratio),
                          np.asarray(ascent_response, dtype=float), np.asarray(best_face_response, dtype=float))


def filter_notes(model: nn.Module, input_size: int, n_shown: int, k: int = TOP_K) -> dict[str, str]:
    """Run-dependent numbers for the page's prose: map sizes of the layers involved, filters and faces shown."""
    sizes = map_sizes(model, [RESPONSE_LAYER, FILTER_MAP_LAYER], input_size)
    conv = model.get_submodule(LAST_CONV)
    return {"n_filters": str(conv.out_channels), "n_shown": str(n_shown), "k": str(k),
            "response_map": "x".join(map(str, sizes[RESPONSE_LAYER])),
            "detail_map": "x".join(map(str, sizes[FILTER_MAP_LAYER])), "detail_layer": FILTER_MAP_LAYER,
            "input": f"{input_size}x{input_size}", "min_std": f"{MIN_PIXEL_STD:g}"}
