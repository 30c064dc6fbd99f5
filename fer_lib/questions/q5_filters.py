"""Q5: what the last convolution layer's filters respond to. A filter's *response* is its channel of
``layer4.1.bn2`` (the last convolution and its BatchNorm) averaged over positions. Four views: the validation faces
that excite it most; its tuning to each class (AUROC) against the same filter of a randomly initialised network, and
its vote in the final layer; what its top faces share beyond their class; a face grown by gradient ascent."""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import false_discovery_control, norm, rankdata
from torch import nn

from fer_lib.model.network import IMAGENET_MEAN, IMAGENET_STD, preprocess
from fer_lib.questions.q4_saliency import model_device, randomised_copy

RESPONSE_LAYER = "layer4.1.bn2"
N_SHOWN = 16  # filters shown with their grown face and top faces
TOP_K = 16  # top faces per filter (after removing second copies of a photo)
K_SHOWN = 10  # top faces per filter in the figure and the answer (the attribute shifts use all TOP_K)
MIN_PIXEL_STD = 4.0  # gray levels (of 255): a face below this is blank or near-uniform and never a "top face"
N_PERMUTATIONS = 1000  # within-class attribute shuffles of the chance baseline
ALPHA = 0.05  # false-discovery rate of tuning; per-test level of the attribute shifts
RANDOM_LEVEL = 0.95  # a tuned filter's AUROC also beats this share of the untrained filters (at their best class)
QUIET = 0.2  # a filter is quiet for a class when its AUROC for it is below this (the class's faces respond least)
ASCENT_SHIFT = 3.0  # pixels (of 48): the largest random shift of a grown face per step
ASCENT_ZOOM = 0.1  # the largest random zoom (+-10%)
ASCENT_DEGREES = 10.0  # the largest random rotation
GRID = 6  # the change is drawn on a 6 x 6 grid (8-px cells of a 48-px face: a brow, an eye) and enlarged smoothly
MAX_CHANGE = 0.06  # the largest root-mean-square change of a grown face from its start (of the gray range: 15 levels)
PENALTY = 100.0  # weight of the mean squared change in the loss (response units per squared gray range)
FOCUS = 1.5  # a grown face's change is "on" a face part when that part changes this many times the face's average
COMPARED = ("mouth_open", "eye_open", "brow_height", "head_turn", "brightness", "contrast")  # of face_attributes
FACE_PARTS = ("brows", "eyes", "nose", "mouth")  # landmark regions a grown face's change is measured on
Z95 = norm.ppf(0.975)


@contextmanager
def capture(model: nn.Module, layer: str):
    """Record ``layer``'s output in ``store["out"]``, cloned (BasicBlock adds the skip to bn2's output in place)."""
    store: dict[str, torch.Tensor] = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.__setitem__("out", o.clone()))
    try:
        yield store
    finally:
        handle.remove()


@torch.no_grad()
def filter_responses(model: nn.Module, images: np.ndarray, input_size: int = 48, batch_size: int = 256
                     ) -> np.ndarray:
    """Mean response (N, C) of every channel of ``RESPONSE_LAYER`` for uint8 faces (N, 48, 48)."""
    twin, out = copy.deepcopy(model).eval(), []
    with capture(twin, RESPONSE_LAYER) as store:
        for start in range(0, len(images), batch_size):
            twin(preprocess(torch.as_tensor(images[start:start + batch_size]), input_size).to(model_device(model)))
            out.append(store["out"].float().mean((2, 3)).cpu())
    return torch.cat(out).numpy()


def informative_faces(images: np.ndarray) -> np.ndarray:
    """(N,) bool: faces whose pixel standard deviation reaches ``MIN_PIXEL_STD`` (FER2013 has blank images)."""
    return np.asarray(images, dtype=np.float32).reshape(len(images), -1).std(1) >= MIN_PIXEL_STD


def top_faces(responses: np.ndarray, k: int = TOP_K, valid: np.ndarray | None = None,
              groups: np.ndarray | None = None) -> np.ndarray:
    """(filters, k) indices of the faces with the strongest response, strongest first: never a face with ``valid``
    False (blank), and with ``groups`` (a copy-group id per face) only each photo's strongest face."""
    allowed = np.ones(len(responses), bool) if valid is None else np.asarray(valid, bool)
    groups = np.arange(len(responses)) if groups is None else np.asarray(groups)
    k = min(k, len(np.unique(groups[allowed])))
    rows = []
    for order in np.argsort(-responses.astype(float), axis=0, kind="stable").T:  # strongest first
        order = order[allowed[order]]
        rows.append(order[np.sort(np.unique(groups[order], return_index=True)[1])[:k]])  # each group's strongest
    return np.array(rows, dtype=np.int64).reshape(responses.shape[1], k)


# --- tuning to each class over all faces, against a random network, and the last layer's votes ------------

@dataclass
class Tuning:
    """Every filter's AUROC per class (response, class against the rest), trained and random network (the same
    filter index). A filter is *tuned* when its preferred class's AUROC beats the random filter's (one-sided z-test on
    Hanley-McNeil errors, times the classes for picking the best, at a false-discovery rate of ``ALPHA``) and exceeds
    ``random_threshold``, the ``RANDOM_LEVEL`` quantile of the random filters' best-class AUROC; *mixed* when its best
    two classes tie (within 1.96 combined errors); it *votes* for its class when that gets its largest fc weight."""

    auroc: np.ndarray  # (n_classes, F) trained network
    random_auroc: np.ndarray  # (n_classes, F)
    se: np.ndarray  # (n_classes, F) Hanley-McNeil standard errors, trained
    random_se: np.ndarray  # (n_classes, F) and random
    fc: np.ndarray  # (n_classes, F) final-layer weights

    def __post_init__(self):
        filters = np.arange(self.auroc.shape[1])
        ranked = np.argsort(-np.nan_to_num(self.auroc, nan=-1), axis=0, kind="stable")  # a class without faces last
        self.preferred, second = ranked[0], ranked[1]
        self.best, self.random_best = self.auroc[self.preferred, filters], self.random_auroc[self.preferred, filters]
        self.random_threshold = float(np.percentile(np.nanmax(self.random_auroc, 0), 100 * RANDOM_LEVEL))
        se, random_se = self.se[self.preferred, filters], self.random_se[self.preferred, filters]
        self.p = np.minimum(1.0, norm.sf((self.best - self.random_best) / np.hypot(se, random_se)) * len(self.auroc))
        self.tuned = (false_discovery_control(self.p) <= ALPHA) & (self.best > self.random_threshold)
        gap = self.best - self.auroc[second, filters]
        self.mixed = self.tuned & (gap <= Z95 * np.hypot(se, self.se[second, filters]))
        self.one_class = self.tuned & ~self.mixed
        self.votes = self.fc.argmax(0) == self.preferred

    def chance_votes(self, among: np.ndarray) -> float:
        """Expected share of ``among`` (bool, F) voting for their class if votes ignored tuning: the sum over
        classes of (share preferring c) x (share whose largest weight goes to c); nan for no filters."""
        among = np.asarray(among, bool)
        if not among.any():
            return float("nan")
        prefer = np.bincount(self.preferred[among], minlength=len(self.auroc)) / among.sum()
        return float(prefer @ (np.bincount(self.fc[:, among].argmax(0), minlength=len(self.auroc)) / among.sum()))

    def by_class(self, among: np.ndarray | None = None) -> np.ndarray:
        """(n_classes,) int: filters of ``among`` (default: the one-class filters) per preferred class."""
        return np.bincount(self.preferred[self.one_class if among is None else among], minlength=len(self.auroc))

    def quiet_by_class(self, below: float = QUIET) -> np.ndarray:
        """(n_classes,) int: filters whose AUROC for the class is below ``below`` (they respond least to it)."""
        return (np.nan_to_num(self.auroc, nan=0.5) < below).sum(1)


def auroc_by_class(responses: np.ndarray, labels: np.ndarray, n_classes: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """AUROC (n_classes, F) of each column of ``responses`` (N, F) for class c against the rest (NaN for a class
    without faces), and Hanley and McNeil's (1982) standard error: a cheap normal approximation where a bootstrap
    of 512 x 7 AUROCs would cost too much."""
    from scipy.stats import mannwhitneyu

    labels = np.asarray(labels)
    auc = np.full((n_classes, responses.shape[1]), np.nan)
    for c in np.unique(labels):  # AUROC = U / (n1 n0), every filter at once (one sklearn call a filter costs 40x)
        inside = labels == c
        if 0 < inside.sum() < len(labels):
            u = mannwhitneyu(responses[inside], responses[~inside], axis=0, method="asymptotic").statistic
            auc[c] = u / (inside.sum() * (~inside).sum())
    n1 = np.bincount(labels, minlength=n_classes)[:, None].astype(float)
    n0 = len(labels) - n1
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt((auc * (1 - auc) + (n1 - 1) * (q1 - auc ** 2) + (n0 - 1) * (q2 - auc ** 2)) / (n1 * n0))
    return auc, se


def class_tuning(responses: np.ndarray, random_responses: np.ndarray, labels: np.ndarray, fc_weight: np.ndarray,
                 valid: np.ndarray | None = None) -> Tuning:
    """:class:`Tuning` from the trained and random networks' responses (N, F) over the (``valid``) faces and the
    final layer's weight (n_classes, F)."""
    keep = np.ones(len(labels), bool) if valid is None else np.asarray(valid, bool)
    (auc, se), (rand, rand_se) = (auroc_by_class(np.asarray(r)[keep], np.asarray(labels)[keep], len(fc_weight))
                                  for r in (responses, random_responses))
    return Tuning(auc, rand, se, rand_se, np.asarray(fc_weight, dtype=float))


def pick_filters(tuning: Tuning, responses: np.ndarray, n: int = N_SHOWN, seed: int = 0) -> np.ndarray:
    """The filters shown: for each class its one-class filter with the largest AUROC margin over the random
    network (when it has one), then active filters (ever positive) drawn at random, so typical ones show too."""
    active = np.flatnonzero(responses.max(0) > 0)
    margin = tuning.best - tuning.random_best
    chosen: list[int] = []
    for c in range(len(tuning.auroc)):
        candidates = [f for f in active if tuning.preferred[f] == c and tuning.one_class[f]]
        if candidates and len(chosen) < n:
            chosen.append(int(max(candidates, key=lambda f: (margin[f], -f))))
    extra = np.random.default_rng(seed).permutation(np.setdiff1d(active, chosen))[:max(0, n - len(chosen))]
    return np.array(chosen + sorted(int(f) for f in extra), dtype=np.int64)


# --- what the top faces share beyond their class -------------------------------------------------------------

def within_class_z(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, A): each attribute in standard deviations from the mean of the face's own class; missing stays missing."""
    by_class = pd.DataFrame(np.asarray(values, dtype=float)).groupby(np.asarray(labels))
    sd = by_class.transform("std", ddof=0)
    return ((by_class.obj - by_class.transform("mean")) / sd.where(sd > 0, 1)).to_numpy()


def _top_mean(z: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(F, A) mean over each filter's top faces of the measured values (missing left out; NaN if none)."""
    picked = z[top]  # (F, k, A)
    n = np.isfinite(picked).sum(1)
    return np.where(n > 0, np.nansum(picked, 1) / np.maximum(n, 1), np.nan)


def attribute_shift(values: np.ndarray, labels: np.ndarray, top: np.ndarray, valid: np.ndarray | None = None,
                    names: tuple[str, ...] = COMPARED, n_permutations: int = N_PERMUTATIONS, seed: int = 0
                    ) -> pd.DataFrame:
    """How each filter's top faces ``top`` (F, k) differ from faces of their classes in attribute columns ``values``
    (N, A): the mean within-class z of its top faces counts at p <= ``ALPHA`` against ``n_permutations`` shuffles of
    the rows among the (``valid``) faces of each class. Per attribute and direction: the filters whose top faces are
    higher / lower, the count under shuffles (mean, 95% upper bound) and "beyond chance" (above the bound)."""
    from fer_lib.data.face_attributes import ATTRIBUTES

    labels = np.asarray(labels)
    pool = np.ones(len(labels), bool) if valid is None else np.asarray(valid, bool)
    z = np.full((len(labels), np.shape(values)[1]), np.nan)
    z[pool] = within_class_z(np.asarray(values, dtype=float)[pool], labels[pool])
    shift = _top_mean(z, top)  # (F, A)
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(pool & (labels == c)) for c in np.unique(labels[pool])]
    null = np.empty((n_permutations, *shift.shape))
    for b in range(n_permutations):
        order = np.arange(len(labels))
        for rows in classes:
            order[rows] = rows[rng.permutation(len(rows))]
        null[b] = _top_mean(z[order], top)
    null = np.nan_to_num(null)
    hit = (1 + (np.abs(null) >= np.abs(shift)[None] - 1e-12).sum(0)) / (1 + n_permutations) <= ALPHA  # NaN: no hit
    # each shuffle's own p against the shuffles (itself included): the p-values a chance labelling would get
    null_hit = (n_permutations + 1 - rankdata(np.abs(null), method="min", axis=0)) / n_permutations <= ALPHA
    rows = []
    for a, name in enumerate(names):
        for side, sign in (("higher", 1), ("lower", -1)):
            chance = (null_hit & (sign * null > 0)).sum(1)[:, a]  # (P,) filters that count in each shuffle
            bound = int(np.ceil(np.percentile(chance, 97.5)))
            count = int((hit & np.isfinite(shift) & (sign * shift > 0))[:, a].sum())
            rows.append({"attribute": ATTRIBUTES[name], "top faces": side, "filters": count,
                         "by chance (mean)": float(chance.mean()), "by chance (95% up to)": bound,
                         "beyond chance": count > bound})
    return pd.DataFrame(rows)


# --- faces grown by gradient ascent from the mean face ----------------------------------------------------------

def random_view(x: torch.Tensor, generator: torch.Generator, shift: float, scale: float,
                degrees: float) -> torch.Tensor:
    """Each image of ``x`` (B, 1, S, S) in [0, 1] shifted by up to ``shift`` pixels, scaled by 1 +- ``scale`` and
    rotated by up to ``degrees`` (each draw its own); what moves in from outside is mid-gray."""
    b, size = len(x), x.shape[-1]
    u = torch.rand(b, 4, generator=generator) * 2 - 1  # (B, 4) in [-1, 1]
    angle, zoom = u[:, 0] * math.radians(degrees), 1 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * shift * 2 / size], 1),
                         torch.stack([sin, cos, u[:, 3] * shift * 2 / size], 1)], 1).to(x.device)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5


def grow_faces(model: nn.Module, filters, start: np.ndarray, input_size: int = 48, steps: int = 128,
               lr: float = 0.01, max_change: float = MAX_CHANGE, views: bool = True, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces (F, 48, 48) grown from ``start`` (48, 48), both in [0, 1], to raise each filter's mean response, and the
    responses of the start and of the grown faces (F,). The change is a ``GRID`` x ``GRID`` image enlarged (bicubic),
    so it moves areas the size of a brow, not single pixels; Adam maximises the response minus ``PENALTY`` times the
    mean squared change, capped at a root mean square of ``max_change``. With ``views`` each step sees a
    :func:`random_view`, so only changes that work wherever they sit survive. Seeded privately."""
    device = model_device(model)
    twin = copy.deepcopy(model).eval().requires_grad_(False)
    filters = torch.as_tensor(np.asarray(filters), dtype=torch.long, device=device)
    g = torch.Generator().manual_seed(seed)
    side = start.shape[-1]
    base = torch.as_tensor(np.asarray(start), dtype=torch.float32, device=device).expand(len(filters), 1, side, side)
    coarse = torch.zeros(len(filters), 1, GRID, GRID, device=device, requires_grad=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    optimizer = torch.optim.Adam([coarse], lr=lr)
    motion = (ASCENT_SHIFT, ASCENT_ZOOM, ASCENT_DEGREES) if views else (0, 0, 0)

    def change() -> torch.Tensor:
        return F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)

    def response(img: torch.Tensor, store) -> torch.Tensor:
        img = F.interpolate(img, size=(input_size, input_size), mode="bilinear", align_corners=False)
        twin((img.expand(-1, 3, -1, -1) - mean) / std)
        return store["out"][torch.arange(len(filters), device=device), filters].float().mean((1, 2))  # (F,)

    with capture(twin, RESPONSE_LAYER) as store:
        with torch.no_grad():
            before = response(base, store).cpu().numpy()
        for _ in range(steps):
            delta = change()
            act = response(random_view((base + delta).clamp(0, 1), g, *motion), store)
            optimizer.zero_grad()
            (-(act - PENALTY * delta.pow(2).mean((1, 2, 3))).sum()).backward()
            optimizer.step()
            with torch.no_grad():  # the cap: the change is linear in the coarse image
                rms = change().pow(2).mean((1, 2, 3)).sqrt()
                coarse.mul_((max_change / rms.clamp(min=max_change)).view(-1, 1, 1, 1))
        with torch.no_grad():
            final = (base + change()).clamp(0, 1)
            after = response(final, store).cpu().numpy()
    return final[:, 0].cpu().numpy(), before, after


@dataclass
class Growth:
    """Where each grown face changed, on the start face's landmark regions (``FACE_PARTS``; all NaN where the detector
    misses the start face): ``change`` is the mean absolute change per pixel of each part over that of the whole face
    (1: as much as the face's average), ``signed`` the mean change (negative: darker)."""

    change: np.ndarray  # (F, parts)
    signed: np.ndarray  # (F, parts)

    def __post_init__(self):
        self.focus = np.nan_to_num(self.change, nan=-1).argmax(1)  # (F,) the part that changed most
        self.on_part = np.nan_to_num(self.change.max(1, initial=0), nan=0) >= FOCUS  # concentrated on it

    def named(self, control: Growth | None = None) -> np.ndarray:
        """(F,) on a part, and (with ``control``, the same filters grown in the untrained network) one the control
        changes less than ``FOCUS``: a part any network changes (the image centre) is the method's bias."""
        if control is None:
            return self.on_part
        return self.on_part & ~(np.nan_to_num(control.change[np.arange(len(self.change)), self.focus]) >= FOCUS)

    def changes(self, control: Growth) -> list:
        """Per grown face: [(part, sign of its mean change)] where :meth:`named` with ``control``, else []."""
        return [[(FACE_PARTS[j], -1 if self.signed[i, j] < 0 else 1)] if on else []
                for i, (j, on) in enumerate(zip(self.focus, self.named(control)))]


def growth_regions(start: np.ndarray, grown: np.ndarray) -> Growth:
    """:class:`Growth` of ``grown`` (F, 48, 48) from ``start`` (48, 48), both in [0, 1]."""
    from fer_lib.data.landmarks import face_landmarks
    from fer_lib.data.regions import landmark_regions

    points, found = face_landmarks(np.clip(np.round(start[None] * 255), 0, 255).astype(np.uint8))
    diff = np.asarray(grown, dtype=float) - np.asarray(start, dtype=float)[None]
    change, signed = np.full((2, len(grown), len(FACE_PARTS)), np.nan)
    if found[0]:
        regions = {r: m[0] for r, m in landmark_regions(points).items()}
        average = np.abs(diff[:, ~regions["outside_face"]]).mean(1)
        for j, part in enumerate(FACE_PARTS):
            if regions[part].any():
                change[:, j] = np.abs(diff[:, regions[part]]).mean(1) / np.maximum(average, 1e-9)
                signed[:, j] = diff[:, regions[part]].mean(1)
    return Growth(change, signed)


@dataclass
class FiltersAnswer:
    """What Q5's page shows: every filter's tuning against an untrained network and the last layer's votes, what
    its top faces share beyond their class, and for the filters shown a face grown to excite it."""

    tuning: Tuning
    top: np.ndarray  # (filters, TOP_K) indices of each filter's strongest validation faces, one per photo
    valid: np.ndarray  # (faces,) informative (not blank) faces
    detected: float  # share of the faces the landmark detector found
    shifts: pd.DataFrame  # attribute_shift()
    chosen: np.ndarray  # (shown,) the filters shown
    start: np.ndarray  # (48, 48) in [0, 1]: the mean validation face every grown face starts from
    grown: np.ndarray  # (shown, 48, 48) in [0, 1]
    before: np.ndarray  # (shown,) response to the start
    after: np.ndarray  # (shown,) response to the grown face
    best_face: np.ndarray  # (shown,) response to the filter's strongest validation face
    growth: Growth
    control: Growth  # the same filters grown in the untrained network
    changes: list  # per shown filter: [(part, +1 / -1)], what its grown face changes (Growth.changes)
    example: int  # the shown filter the answer describes: one-class, a change named, voting, largest margin
    map_side: int  # side of the response map


def filters_answer(model: nn.Module, images: np.ndarray, labels: np.ndarray, input_size: int = 48,
                   n_shown: int = N_SHOWN, ascent_steps: int = 128, seed: int = 0) -> FiltersAnswer:
    """Q5 on the validation faces ``images`` (uint8 (N, 48, 48)) and their ``labels``."""
    from fer_lib.core.io import default_cache_dir
    from fer_lib.data.duplicates import cached_duplicates
    from fer_lib.data.face_attributes import face_attributes
    from fer_lib.questions.q1_model import stage_map_sides

    responses = filter_responses(model, images, input_size)  # (faces, filters)
    untrained = randomised_copy(model, seed)  # every layer re-initialised at random
    valid = informative_faces(images)
    top = top_faces(responses, valid=valid, groups=cached_duplicates(images, cache_dir=default_cache_dir()).group)
    tuning = class_tuning(responses, filter_responses(untrained, images, input_size), labels,
                          model.fc[1].weight.detach().float().cpu().numpy(), valid)  # fc = Dropout + Linear
    attributes = face_attributes(images, cache_dir=default_cache_dir())
    shifts = attribute_shift(attributes[list(COMPARED)].to_numpy(), labels, top, valid, seed=seed)
    chosen = pick_filters(tuning, responses, n_shown, seed)
    start = images[valid].mean(0) / 255  # one start for every filter: the differences compare across rows
    grown, before, after = grow_faces(model, chosen, start, input_size, steps=ascent_steps, seed=seed)
    growth = growth_regions(start, grown)
    control = growth_regions(start, grow_faces(untrained, chosen, start, input_size, ascent_steps, seed=seed)[0])
    said = growth.changes(control)
    margin = (tuning.best - tuning.random_best)[chosen]
    order = [i for i in np.argsort(-margin, kind="stable") if tuning.one_class[chosen[i]] and said[i]]
    example = ([i for i in order if tuning.votes[chosen[i]]] or order or [int(np.argmax(margin))])[0]
    return FiltersAnswer(tuning, top, valid, float(attributes["detected"].mean()), shifts, chosen, start, grown,
                         before, after, responses[top[chosen, 0], chosen], growth, control, said, int(example),
                         stage_map_sides(model, input_size)[RESPONSE_LAYER.split(".")[0]])
