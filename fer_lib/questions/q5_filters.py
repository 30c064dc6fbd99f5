"""Q5: what the last convolution layer's filters respond to.

A filter's *response* is its channel of ``layer4.1.bn2`` (the last convolution, ``layer4.1.conv2``,
followed by its BatchNorm, a per-channel affine map), averaged over positions: positive means the
filter fires. Four views, the first three over all the layer's filters:

1. the validation faces that excite each filter most (blank images and second copies of a photo left out);
2. class selectivity: whether those top faces share a class more than they would under shuffled labels,
   with the false-discovery rate over the layer's filters held at ``ALPHA`` (Benjamini-Hochberg);
3. what the top faces share beyond their class: mouth and eye opening, head turn, brightness and contrast
   (``face_attributes``), compared with faces of the same classes, against within-class shuffles;
4. for the filters shown, an image made by gradient ascent on the input in a Fourier parameterisation with
   random jitter, scale and rotation at each step (the feature-visualisation recipe of Olah et al., 2017).

Code that runs a model builds its inputs on the model's device and returns CPU numpy arrays.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import false_discovery_control
from torch import nn

from fer_lib import CLASS_NAMES

LAST_CONV = "layer4.1.conv2"
RESPONSE_LAYER = "layer4.1.bn2"
N_SHOWN = 16  # filters shown with their gradient-ascent image and top faces
TOP_K = 16  # top faces per filter (after removing second copies of a photo)
MIN_PIXEL_STD = 4.0  # gray levels (of 255): a face below this is blank or near-uniform and never a "top face"
N_PERMUTATIONS = 1000  # label shuffles (and within-class attribute shuffles) of the chance baselines
ALPHA = 0.05  # false-discovery rate of class selectivity; per-test level of the attribute shifts
ASCENT_SHIFT = 3.0  # pixels: the largest random shift of a gradient-ascent image per step
ASCENT_ZOOM = 0.1  # the largest random zoom (+-10%)
ASCENT_DEGREES = 10.0  # the largest random rotation
STRETCH = (1.0, 99.0)  # percentiles mapped to black and white when a gradient-ascent image is shown
COMPARED = ("mouth_open", "eye_open", "head_turn", "brightness", "contrast")  # attributes of face_attributes


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


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


def _frozen_twin(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def response_map_side(model: nn.Module, input_size: int = 48) -> int:
    """Side of the response layer's feature map for faces of ``input_size`` (2 at 48 px, 3 at 72 px)."""
    from fer_lib.questions.q1_model import stage_map_sides

    return stage_map_sides(model, input_size)[RESPONSE_LAYER.split(".")[0]]


def informative_faces(images: np.ndarray, min_std: float = MIN_PIXEL_STD) -> np.ndarray:
    """(N,) bool: faces whose pixel standard deviation reaches ``min_std`` (FER2013 has some blank images)."""
    images = np.asarray(images, dtype=np.float32)
    return images.reshape(len(images), -1).std(1) >= min_std


def duplicate_groups(images: np.ndarray) -> np.ndarray:
    """(N,) copy-group id per face (exact and near copies of one photo share an id), cached by the pixels."""
    from fer_lib.core.io import default_cache_dir
    from fer_lib.data.duplicates import cached_duplicates

    return cached_duplicates(np.asarray(images), cache_dir=default_cache_dir()).group


@torch.no_grad()
def filter_responses(model: nn.Module, images: np.ndarray, input_size: int = 48, batch_size: int = 256,
                     layer: str = RESPONSE_LAYER) -> np.ndarray:
    """Mean response (N, C) of every channel of ``layer`` for uint8 faces (N, 48, 48)."""
    from fer_lib.model.network import preprocess

    twin = copy.deepcopy(model).eval()
    device = _device(model)
    out = []
    with capture(twin, layer) as store:
        for start in range(0, len(images), batch_size):
            twin(preprocess(torch.as_tensor(images[start:start + batch_size]), input_size).to(device))
            out.append(store["out"].float().mean((2, 3)).cpu())
    return torch.cat(out).numpy()


def inactive_filters(responses: np.ndarray) -> np.ndarray:
    """Filters whose response is never positive on any of the faces given."""
    return np.flatnonzero(responses.max(0) <= 0)


def top_faces(responses: np.ndarray, filters: np.ndarray, k: int = TOP_K, valid: np.ndarray | None = None,
              groups: np.ndarray | None = None) -> np.ndarray:
    """(len(filters), k) indices of the faces with the strongest response, strongest first.

    Faces with ``valid`` False (blank images) are never chosen; with ``groups`` (a copy-group id per face) a
    face is skipped when a stronger face of its group is already chosen, so no photo appears twice.
    """
    scores = responses[:, filters].astype(float)
    allowed = np.ones(len(responses), bool) if valid is None else np.asarray(valid, bool)
    if groups is None:
        groups = np.arange(len(responses))
    k = min(k, len(np.unique(np.asarray(groups)[allowed])))
    order = np.argsort(-scores, axis=0, kind="stable")  # (N, F)
    out = np.zeros((len(filters), k), dtype=np.int64)
    for f in range(len(filters)):
        seen, row = set(), []
        for i in order[:, f]:
            if allowed[i] and groups[i] not in seen:
                seen.add(groups[i])
                row.append(i)
                if len(row) == k:
                    break
        out[f] = row
    return out


def class_counts(labels: np.ndarray, top: np.ndarray, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """(len(top), n_classes) int: how many of each filter's top faces belong to each class."""
    return np.stack([np.bincount(labels[row], minlength=n_classes) for row in top])


# --- class selectivity over all filters, against shuffled labels -------------------------------------------

def surprise_table(labels: np.ndarray, k: int, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """(n_classes, k + 1): -log10 of the chance that ``k`` faces drawn at random from ``labels`` hold at least
    ``x`` faces of class c (the hypergeometric tail), for x = 0..k."""
    from scipy.stats import hypergeom

    counts = np.bincount(labels, minlength=n_classes)
    x = np.arange(k + 1)
    return np.stack([-np.log10(np.clip(hypergeom.sf(x - 1, len(labels), n, k), 1e-300, 1)) for n in counts])


def _selectivity(top_labels: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of top-face labels (..., k): the largest surprise over the classes, and that class."""
    scores = np.stack([table[c][(top_labels == c).sum(-1)] for c in range(len(table))], -1)  # (..., n_classes)
    return scores.max(-1), scores.argmax(-1)


def _exceed_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Permutation p-value per column: (1 + shuffles at or above the observed value) / (1 + shuffles)."""
    return (1 + (null >= observed[None] - 1e-12).sum(0)) / (1 + len(null))


def _null_p(null: np.ndarray) -> np.ndarray:
    """(P, F): each shuffle's p-value against the other shuffles (the p-values a chance labelling would get)."""
    ranked = np.sort(null, 0)
    at_least = np.stack([len(null) - np.searchsorted(ranked[:, f], null[:, f] - 1e-12, side="left")
                         for f in range(null.shape[1])], 1)  # shuffles >= each value, itself included
    return at_least / len(null)


@dataclass
class Selectivity:
    """Class selectivity of every filter's top faces, against label shuffles.

    A filter is *selective* when its Benjamini-Hochberg adjusted p-value ``q`` is at most ``alpha``: among the
    filters called selective, the expected share called so by chance is at most ``alpha``. That one count is the
    finding; ``null_count`` is the same count under each label shuffle.
    """

    score: np.ndarray  # (F,) the largest over the classes of -log10 P(at least this many faces of the class)
    top_class: np.ndarray  # (F,) that class
    p: np.ndarray  # (F,) share of label shuffles whose score matches or beats the filter's
    q: np.ndarray  # (F,) p adjusted for the F tests (Benjamini-Hochberg)
    null: np.ndarray  # (P, F) the scores under each label shuffle
    null_count: np.ndarray  # (P,) filters selective (after the same control) in each shuffle
    k: int
    alpha: float = ALPHA

    @property
    def selective(self) -> np.ndarray:
        """(F,) bool: class-selective at a false-discovery rate of ``alpha``."""
        return self.q <= self.alpha

    @property
    def n_selective(self) -> int:
        return int(self.selective.sum())

    def chance(self) -> tuple[float, int, int]:
        """Mean and 95% range of the number of selective filters under shuffled labels."""
        lo, hi = np.percentile(self.null_count, [2.5, 97.5])
        return float(self.null_count.mean()), math.floor(lo), math.ceil(hi)

    @property
    def beyond_chance(self) -> bool:
        return self.n_selective > self.chance()[2]

    def by_class(self) -> np.ndarray:
        """(n_classes,) int: selective filters per class (the class most over-represented among their top faces)."""
        return np.bincount(self.top_class[self.selective], minlength=len(CLASS_NAMES))


def class_selectivity(labels: np.ndarray, top: np.ndarray, valid: np.ndarray | None = None,
                      n_permutations: int = N_PERMUTATIONS, alpha: float = ALPHA, seed: int = 0) -> Selectivity:
    """Class selectivity of each filter's top faces ``top`` (F, k) over the labels of all faces, with a baseline
    from ``n_permutations`` shuffles of the labels among the (``valid``) faces."""
    labels = np.asarray(labels)
    pool = np.flatnonzero(np.ones(len(labels), bool) if valid is None else np.asarray(valid, bool))
    k = top.shape[1]
    table = surprise_table(labels[pool], k)
    score, cls = _selectivity(labels[top], table)
    rng = np.random.default_rng(seed)
    null = np.empty((n_permutations, len(top)))
    for b in range(n_permutations):
        shuffled = labels.copy()
        shuffled[pool] = labels[pool][rng.permutation(len(pool))]
        null[b] = _selectivity(shuffled[top], table)[0]
    p = _exceed_p(score, null)
    null_count = (false_discovery_control(_null_p(null), axis=1) <= alpha).sum(1)
    return Selectivity(score, cls, p, false_discovery_control(p), null, null_count, k, alpha)


# --- what the top faces share beyond their class -------------------------------------------------------------

def within_class_z(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, A): each attribute in standard deviations from the mean of the face's own class."""
    values = np.asarray(values, dtype=float)
    out = np.zeros_like(values)
    for c in np.unique(labels):
        rows = labels == c
        sd = values[rows].std(0)
        out[rows] = (values[rows] - values[rows].mean(0)) / np.where(sd > 0, sd, 1)
    return out


@dataclass
class AttributeShift:
    """How each filter's top faces differ from faces of the same classes, per attribute.

    A shift counts at the per-filter level ``alpha``; the control is the number of filters that count, set
    against the same number under within-class shuffles (``null_up``, ``null_down``).
    """

    names: tuple[str, ...]  # attribute columns
    shift: np.ndarray  # (F, A) mean within-class z of the top faces (0: like their classes; +1: one SD above)
    p: np.ndarray  # (F, A) two-sided, against within-class shuffles of the attributes
    null_up: np.ndarray  # (P, A) filters "higher" by chance in each shuffle
    null_down: np.ndarray  # (P, A) filters "lower" by chance
    alpha: float = ALPHA

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        hit = self.p <= self.alpha
        return (hit & (self.shift > 0)).sum(0), (hit & (self.shift < 0)).sum(0)

    def table(self):
        """Per attribute and direction: filters whose top faces are higher / lower than same-class faces, and
        that count under shuffles (mean, 95% upper bound); ``beyond chance`` when the count exceeds the bound."""
        import pandas as pd

        from fer_lib.data.face_attributes import ATTRIBUTES

        up, down = self.counts()
        rows = []
        for a, name in enumerate(self.names):
            for label, n, null in (("higher", up[a], self.null_up[:, a]), ("lower", down[a], self.null_down[:, a])):
                hi = int(np.ceil(np.percentile(null, 97.5)))
                rows.append({"attribute": ATTRIBUTES[name], "top faces": label, "filters": int(n),
                             "by chance (mean)": float(null.mean()), "by chance (95% up to)": hi,
                             "beyond chance": bool(n > hi)})
        return pd.DataFrame(rows)


def attribute_shift(values: np.ndarray, labels: np.ndarray, top: np.ndarray, valid: np.ndarray | None = None,
                    names: tuple[str, ...] = COMPARED, n_permutations: int = N_PERMUTATIONS, alpha: float = ALPHA,
                    seed: int = 0) -> AttributeShift:
    """Mean within-class z of each filter's top faces ``top`` (F, k) for attribute columns ``values`` (N, A),
    tested against ``n_permutations`` shuffles of the attribute rows among the (``valid``) faces of each class."""
    labels = np.asarray(labels)
    pool = np.ones(len(labels), bool) if valid is None else np.asarray(valid, bool)
    z = np.zeros((len(labels), np.shape(values)[1]))
    z[pool] = within_class_z(np.asarray(values, dtype=float)[pool], labels[pool])
    shift = z[top].mean(1)  # (F, A)
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(pool & (labels == c)) for c in np.unique(labels[pool])]
    null = np.empty((n_permutations, *shift.shape))
    for b in range(n_permutations):
        order = np.arange(len(labels))
        for rows in classes:
            order[rows] = rows[rng.permutation(len(rows))]
        null[b] = z[order][top].mean(1)
    p = (1 + (np.abs(null) >= np.abs(shift)[None] - 1e-12).sum(0)) / (1 + n_permutations)
    null_p = np.stack([_null_p(np.abs(null[:, :, a])) for a in range(shift.shape[1])], -1)  # (P, F, A)
    hit = null_p <= alpha
    return AttributeShift(tuple(names), shift, p, (hit & (null > 0)).sum(1), (hit & (null < 0)).sum(1), alpha)


def pick_filters(selectivity: Selectivity, responses: np.ndarray, n: int = N_SHOWN, seed: int = 0) -> np.ndarray:
    """The filters shown: for each class the most class-selective filter (when one is selective), then active
    filters drawn at random, so that the page shows typical filters as well as the clearest ones."""
    active = np.setdiff1d(np.arange(responses.shape[1]), inactive_filters(responses))
    chosen: list[int] = []
    for c in range(len(CLASS_NAMES)):
        candidates = [f for f in active if selectivity.top_class[f] == c and selectivity.selective[f]]
        if candidates and len(chosen) < n:
            chosen.append(int(max(candidates, key=lambda f: (selectivity.score[f], -f))))
    rest = np.setdiff1d(active, chosen)
    extra = np.random.default_rng(seed).permutation(rest)[:max(0, n - len(chosen))]
    return np.array(chosen + sorted(int(f) for f in extra), dtype=np.int64)


# --- gradient ascent in a Fourier parameterisation ------------------------------------------------------------

def fourier_scale(size: int, decay_power: float = 1.0) -> torch.Tensor:
    """(size, size // 2 + 1): the amplitude each frequency of ``rfft2`` gets, 1 / frequency ** decay_power (the
    lowest frequency capped at 1 / size). Equal-variance parameters then give an image whose amplitude spectrum
    falls as 1 / f, like a natural image's, so that no pixel-level noise dominates the optimisation."""
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    freq = torch.sqrt(fx ** 2 + fy ** 2)
    return 1.0 / torch.clamp(freq, min=1.0 / size) ** decay_power


def image_from_spectrum(spectrum: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Real (B, 1, S, S) image (unbounded, before the sigmoid) from parameters (B, 1, S, S // 2 + 1, 2)."""
    size = scale.shape[0]
    return torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=(size, size), norm="ortho")


def spectrum_from_image(image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The parameters (B, 1, S, S // 2 + 1, 2) that :func:`image_from_spectrum` turns into ``image`` (B, 1, S, S)."""
    return torch.view_as_real(torch.fft.rfft2(image, norm="ortho") / scale).contiguous()


def random_view(x: torch.Tensor, generator: torch.Generator, shift: float, scale: float,
                degrees: float) -> torch.Tensor:
    """Each image of ``x`` (B, 1, S, S) in [0, 1] shifted by up to ``shift`` pixels, scaled by 1 +- ``scale`` and
    rotated by up to ``degrees`` (each draw its own); what moves in from outside is mid-gray."""
    b, size = len(x), x.shape[-1]
    u = torch.rand(b, 4, generator=generator) * 2 - 1  # (B, 4) in [-1, 1]
    angle = u[:, 0] * math.radians(degrees)
    zoom = 1 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * shift * 2 / size], 1),
                         torch.stack([sin, cos, u[:, 3] * shift * 2 / size], 1)], 1).to(x.device)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5


def gradient_ascent(model: nn.Module, filters: list[int] | np.ndarray, input_size: int = 48, steps: int = 128,
                    lr: float = 0.05, shift: float = ASCENT_SHIFT, scale: float = ASCENT_ZOOM,
                    degrees: float = ASCENT_DEGREES,
                    decay_power: float = 1.0, init_sd: float = 0.01, seed: int = 0,
                    layer: str = RESPONSE_LAYER) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (F, S, S) in [0, 1] that maximise each filter's mean response, and the responses before/after.

    One grayscale image per filter (the model sees gray faces), all filters in one batch, optimised with Adam
    on its Fourier parameters (:func:`fourier_scale`), passed through a sigmoid. Each step the model sees a
    random view of every image (:func:`random_view`: a shift of up to ``shift`` pixels, a zoom of up to
    ``scale`` and a rotation of up to ``degrees``), so only patterns that excite the filter wherever they sit
    survive. The start and the views come from a private generator seeded with ``seed``; the global random
    state is untouched. Responses are measured on the images as they are, without a random view.
    """
    from fer_lib.model.network import IMAGENET_MEAN, IMAGENET_STD

    device = _device(model)
    twin = _frozen_twin(model)
    filters = torch.as_tensor(np.asarray(filters), dtype=torch.long, device=device)
    g = torch.Generator().manual_seed(seed)
    freq_scale = fourier_scale(input_size, decay_power).to(device)
    spectrum = torch.randn(len(filters), 1, input_size, input_size // 2 + 1, 2, generator=g) * init_sd
    spectrum = spectrum.to(device).requires_grad_()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    optimizer = torch.optim.Adam([spectrum], lr=lr)
    index = torch.arange(len(filters), device=device)

    def image() -> torch.Tensor:
        return torch.sigmoid(image_from_spectrum(spectrum, freq_scale) / 4)  # Lucid's damping of the sigmoid's input

    def response(img: torch.Tensor, store) -> torch.Tensor:
        twin((img.expand(-1, 3, -1, -1) - mean) / std)
        return store["out"][index, filters].float().mean((1, 2))  # (F,)

    with capture(twin, layer) as store:
        with torch.no_grad():
            before = response(image(), store).cpu().numpy()
        for _ in range(steps):
            act = response(random_view(image(), g, shift, scale, degrees), store)
            optimizer.zero_grad()
            (-act.sum()).backward()
            optimizer.step()
        with torch.no_grad():
            final = image()
            after = response(final, store).cpu().numpy()
    return final[:, 0].cpu().numpy(), before, after


def stretch_contrast(images: np.ndarray, low: float = STRETCH[0], high: float = STRETCH[1]) -> np.ndarray:
    """Each image mapped so that its ``low``-th percentile is 0 and its ``high``-th is 1 (clipped): for display."""
    images = np.asarray(images, dtype=np.float32)
    lo = np.percentile(images.reshape(len(images), -1), low, axis=1).reshape(-1, 1, 1)
    hi = np.percentile(images.reshape(len(images), -1), high, axis=1).reshape(-1, 1, 1)
    return np.clip((images - lo) / np.maximum(hi - lo, 1e-6), 0, 1)


def shown_table(filters: np.ndarray, labels: np.ndarray, top: np.ndarray, selectivity: Selectivity,
                shift: AttributeShift, ascent: np.ndarray, best_face: np.ndarray):
    """One row per filter shown, numbers only: the class most over-represented among its top faces and how many
    of them have it, its adjusted p-value ``q`` and whether it is selective, the attribute shifts beyond the
    class (within-class standard deviations; ``shift.p`` tells which beat chance) and its responses to its
    strongest validation face and to its gradient-ascent image.

    ``top``, ``selectivity`` and ``shift`` cover all filters; ``ascent`` and ``best_face`` only those shown."""
    import pandas as pd

    from fer_lib.data.face_attributes import ATTRIBUTES

    filters = np.asarray(filters)
    cls = selectivity.top_class[filters]
    counts = class_counts(labels, top[filters])
    table = pd.DataFrame({"filter": filters, "class": [CLASS_NAMES[c] for c in cls],
                          f"of {top.shape[1]} top faces": counts[np.arange(len(filters)), cls],
                          "q": selectivity.q[filters], "selective": selectivity.selective[filters]})
    for a, name in enumerate(shift.names):
        table[ATTRIBUTES[name]] = shift.shift[filters, a]
    table["best face"] = np.asarray(best_face, dtype=float)
    table["ascent image"] = np.asarray(ascent, dtype=float)
    return table
