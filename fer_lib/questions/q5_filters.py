"""Q5: what the last convolution layer's filters respond to (a *response*: a channel of ``layer4.1.bn2`` averaged
over positions): top faces, tuning (AUROC) against an untrained network and fc votes, the parts whose blurring costs
the response, a face grown by gradient ascent, and what the top faces share beyond their class."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import false_discovery_control, norm, rankdata
from torch import nn

from fer_lib.core.stats import Z95
from fer_lib.model.network import preprocess
from fer_lib.questions.q4_saliency import model_device, randomised_copy

RESPONSE_LAYER = "layer4.1.bn2"
TOP_K = 24  # top faces per filter (after removing second copies of a photo): the part drops and attribute shifts
K_SHOWN = 10  # top faces per filter in the figure and in its label (the majority class of these)
MIN_PIXEL_STD = 4.0  # gray levels (of 255): a face below this is blank or near-uniform and never a "top face"
N_PERMUTATIONS = 1000  # within-class attribute shuffles of the chance baseline
ALPHA = 0.05  # false-discovery rate of tuning; per-test level of the attribute shifts and part drops (Bonferroni)
RANDOM_LEVEL = 0.95  # a tuned filter's AUROC also beats this share of the untrained filters (at their best class)
QUIET = 0.2  # a filter is quiet for a class when its AUROC for it is below this (the class's faces respond least)
SECOND = 0.75  # a second part is named too when its excess over the control reaches this share of the first's
MIN_MEASURED = TOP_K // 2  # a shown filter has at least this many top faces with landmarks, where its class has one
GRID, ASCENT_SHIFT, MAX_CHANGE = 6, 3, 0.06  # ascent: 6x6 change (8-px cells), shifts up to 3 px, RMS cap (of 1)
FOCUS = 1.5  # a grown face's change is "on" a part when that part changes this many times the face's average
COMPARED = ("mouth_open", "eye_open", "brow_height", "head_turn", "brightness", "contrast")  # of face_attributes
FACE_PARTS = ("brows", "eyes", "nose", "mouth")  # landmark regions blurred one at a time


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
    """Every filter's AUROC per class, trained and random network (same index). *Tuned*: its preferred class's AUROC
    beats the random filter's (one-sided z-test on Hanley-McNeil errors, times the classes, FDR ``ALPHA``) and the
    ``RANDOM_LEVEL`` quantile of random best-class AUROCs; *mixed*: its best two classes tie (1.96 combined errors);
    it *votes* for its class when that gets its largest fc weight."""

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
        if not (among := np.asarray(among, bool)).any():
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
    without faces), and Hanley and McNeil's (1982) standard error (a bootstrap of 512 x 7 AUROCs costs too much)."""
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
    """:class:`Tuning` from both networks' responses (N, F) on the ``valid`` faces and the fc weight (n_classes, F)."""
    keep = np.ones(len(labels), bool) if valid is None else np.asarray(valid, bool)
    (auc, se), (rand, rand_se) = (auroc_by_class(np.asarray(r)[keep], np.asarray(labels)[keep], len(fc_weight))
                                  for r in (responses, random_responses))
    return Tuning(auc, rand, se, rand_se, np.asarray(fc_weight, dtype=float))


def majority(top: np.ndarray, labels: np.ndarray, n_classes: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(F,) the most common class among each filter's top faces ``top`` (F, k) and (F,) how many of them have it."""
    counts = np.stack([np.bincount(row, minlength=n_classes) for row in np.asarray(labels)[top]])
    return counts.argmax(1), counts.max(1)


def pick_filters(tuning: Tuning, top_class: np.ndarray, top_count: np.ndarray, measured: np.ndarray
                 ) -> tuple[np.ndarray, int | None]:
    """The filters shown: per class its clearest one-class filter (preferred class, majority of its top faces and
    vote all agree; ``MIN_MEASURED`` of its top faces with landmarks (``measured`` (F,)) where one has, then most top
    faces of the class, then the largest AUROC margin over the random network), then the clearest tuned filter whose
    top faces' majority is another class than its AUROC's (its row, or None)."""
    margin = tuning.best - tuning.random_best
    agree = tuning.one_class & (top_class == tuning.preferred) & tuning.votes
    key = lambda i: (measured[i] >= MIN_MEASURED, top_count[i], margin[i])  # noqa: E731
    chosen = [int(max(f, key=key)) for c in range(len(tuning.auroc))
              if len(f := np.flatnonzero(agree & (tuning.preferred == c)))]
    other = np.flatnonzero(tuning.one_class & (top_class != tuning.preferred))
    extra = [int(max(other, key=key))] if len(other) else []
    return np.array([*chosen, *extra], dtype=np.int64), len(chosen) if extra else None


# --- what the top faces share beyond their class -------------------------------------------------------------

def within_class_z(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, A): each attribute in standard deviations from the mean of the face's own class; missing stays missing."""
    by_class = pd.DataFrame(np.asarray(values, dtype=float)).groupby(np.asarray(labels))
    sd = by_class.transform("std", ddof=0)
    return ((by_class.obj - by_class.transform("mean")) / sd.where(sd > 0, 1)).to_numpy()


def _top_mean(z: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(F, A) mean over each filter's top faces of the measured values (missing left out; NaN if none)."""
    n = np.isfinite(picked := z[top]).sum(1)  # picked: (F, k, A)
    return np.where(n > 0, np.nansum(picked, 1) / np.maximum(n, 1), np.nan)


def attribute_shift(values: np.ndarray, labels: np.ndarray, top: np.ndarray, valid: np.ndarray | None = None,
                    names: tuple[str, ...] = COMPARED, n_permutations: int = N_PERMUTATIONS, seed: int = 0
                    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """How each filter's top faces ``top`` (F, k) differ from faces of their classes in ``values`` (N, A): the mean
    within-class z of its top faces, at p <= ``ALPHA`` against shuffles within each class of the ``valid`` faces. Per
    attribute and direction: filters higher / lower, the count under shuffles (mean, 95% upper bound), "beyond
    chance"; per filter and attribute (F, A) the shift and its two-sided p (1 where unmeasured)."""
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
        null[b] = np.nan_to_num(_top_mean(z[order], top))
    p = (1 + (np.abs(null) >= np.abs(shift)[None] - 1e-12).sum(0)) / (1 + n_permutations)  # (F, A)
    hit = p <= ALPHA  # NaN: no hit
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
    return pd.DataFrame(rows), shift, np.where(np.isfinite(shift), p, 1.0)


# --- where on the face: each part of the top faces blurred in turn ---------------------------------------------

@dataclass
class PartDrops:
    """What each shown filter loses when one part (``FACE_PARTS``) of a top face is blurred, in SDs of its response:
    ``drop`` (shown, k, parts), ``average`` its mean over all filters (the control), NaN where the detector missed
    the face; ``masks`` (shown, k, parts, 48, 48) the parts and ``points`` (shown, k, 68, 2) the landmarks."""

    drop: np.ndarray
    average: np.ndarray
    masks: np.ndarray
    points: np.ndarray
    found: np.ndarray  # (shown, k)

    def named(self, alpha: float = ALPHA) -> list[list[int]]:
        """Per filter the parts it looks at: the one of largest mean excess over the control where its drop is above
        zero and above the control's (one-sided t-tests over faces with landmarks, times the parts), and the next too
        where it passes and its excess reaches ``SECOND`` of the first's; [] otherwise."""
        from scipy.stats import ttest_1samp

        out = []
        for drop, average in zip(self.drop, self.average):
            ok = np.isfinite(drop[:, 0])
            tests = [ttest_1samp(x, 0, alternative="greater").pvalue for x in (drop[ok], drop[ok] - average[ok])]
            passes = np.maximum(*tests) * len(FACE_PARTS) <= alpha if ok.sum() >= 3 else np.zeros(len(FACE_PARTS), bool)
            mean = (drop[ok] - average[ok]).mean(0) if ok.any() else np.zeros(len(FACE_PARTS))
            first, second = np.argsort(-mean, kind="stable")[:2]
            both = passes[second] and mean[second] >= SECOND * mean[first]
            out.append([int(first), int(second)][:1 + both] if passes[first] else [])
        return out

    def maps(self) -> np.ndarray:
        """(shown, k, 48, 48): each face's parts filled with the filter's drop for them (0 elsewhere, NaN-free)."""
        return np.einsum("skp,skpij->skij", np.nan_to_num(self.drop), self.masks)


def part_drops(model: nn.Module, images: np.ndarray, faces: np.ndarray, filters: np.ndarray, responses: np.ndarray,
               scale: np.ndarray, input_size: int = 48) -> PartDrops:
    """:class:`PartDrops` of ``filters`` (shown,) on ``faces`` (shown, k) of uint8 ``images`` with ``responses`` (N, F)
    of SDs ``scale``; a part is blurred as Q4 covers it; only faces the detector finds are run again."""
    from fer_lib.core.io import default_cache_dir
    from fer_lib.data.landmarks import face_landmarks
    from fer_lib.data.regions import landmark_regions
    from fer_lib.questions.q4_occlusion import fill

    flat = np.asarray(faces).ravel()
    points, found = face_landmarks(images[flat], cache_dir=default_cache_dir())  # fitted once: face_attributes
    regions = landmark_regions(points)
    masks = np.stack([regions[part] for part in FACE_PARTS], 1)  # (n, parts, 48, 48)
    x = images[flat[found]].astype(np.float32) / 255
    blurred = fill(x)
    covered = np.concatenate([np.where(masks[found, j], blurred, x) for j in range(len(FACE_PARTS))])
    n_filters = np.shape(responses)[1]
    after = (filter_responses(model, np.clip(np.round(covered * 255), 0, 255).astype(np.uint8), input_size)
             if found.any() else np.zeros((0, n_filters)))
    drop = np.full((len(flat), len(FACE_PARTS), n_filters), np.nan)  # (n, parts, F)
    drop[found] = ((responses[flat[found]][None] - after.reshape(len(FACE_PARTS), found.sum(), n_filters))
                   / np.maximum(scale, 1e-9)).transpose(1, 0, 2)
    shape = (*np.shape(faces), len(FACE_PARTS))
    own = drop[np.arange(len(flat)), :, np.repeat(filters, np.shape(faces)[1])]
    return PartDrops(own.reshape(shape), drop.mean(2).reshape(shape), masks.reshape(*shape, *masks.shape[-2:]),
                     points.reshape(*np.shape(faces), 68, 2), found.reshape(np.shape(faces)))


# --- gradient ascent: a face grown from the mean face to excite each filter -------------------------------------

def grow_faces(model: nn.Module, filters, start: np.ndarray, input_size: int = 48, steps: int = 48, lr: float = 0.01,
               seed: int = 0) -> np.ndarray:
    """Faces (F, 48, 48) in [0, 1] grown from ``start`` (48, 48) by gradient ascent on each filter's mean response:
    Adam on a ``GRID`` x ``GRID`` change enlarged smoothly (areas the size of a brow, not pixels), each step seeing the
    face shifted by up to ``ASCENT_SHIFT`` px (only changes that work wherever they sit survive), the change's root
    mean square capped at ``MAX_CHANGE``. Seeded privately."""
    twin, device, side = copy.deepcopy(model).eval().requires_grad_(False), model_device(model), start.shape[-1]
    g, index = torch.Generator().manual_seed(seed), torch.as_tensor(np.asarray(filters), device=device)
    base = torch.as_tensor(start, dtype=torch.float32, device=device).expand(len(index), side, side)
    coarse = torch.zeros(len(index), 1, GRID, GRID, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([coarse], lr=lr)
    change = lambda: nn.functional.interpolate(coarse, size=(side, side), mode="bicubic")[:, 0]  # noqa: E731
    with capture(twin, RESPONSE_LAYER) as store:
        for _ in range(steps):
            shift = torch.randint(-ASCENT_SHIFT, ASCENT_SHIFT + 1, (2,), generator=g).tolist()
            twin(preprocess(torch.roll((base + change()).clamp(0, 1), shift, (1, 2)), input_size))
            optimizer.zero_grad()
            (-store["out"][torch.arange(len(index)), index].mean()).backward()
            optimizer.step()
            with torch.no_grad():
                coarse.mul_((MAX_CHANGE / change().pow(2).mean((1, 2)).sqrt().clamp(min=MAX_CHANGE)).view(-1, 1, 1, 1))
    with torch.no_grad():
        return (base + change()).clamp(0, 1).cpu().numpy()


def growth_parts(start: np.ndarray, grown: np.ndarray, control: np.ndarray) -> list:
    """Per grown face (F, 48, 48) the part (``FACE_PARTS``, on ``start``'s landmarks) it changes most and the sign of
    its mean change there, where that part changes ``FOCUS`` times the face's average and the same filter grown in the
    untrained network (``control``) changes it less (a part any network changes is the method's bias); else None."""
    from fer_lib.data.landmarks import face_landmarks
    from fer_lib.data.regions import landmark_regions

    points, found = face_landmarks(np.clip(np.round(start[None] * 255), 0, 255).astype(np.uint8))
    if not found[0]:
        return [None] * len(grown)
    regions = {r: m[0] for r, m in landmark_regions(points).items()}
    focus = [(lambda d: np.stack([d[:, regions[p]].mean(1) for p in FACE_PARTS], 1) / np.maximum(  # unchanged: 0
        d[:, ~regions["outside_face"]].mean(1, keepdims=True), 1e-9))(np.abs(x - start)) for x in (grown, control)]
    return [(FACE_PARTS[j], int(np.sign((grown[i] - start)[regions[FACE_PARTS[j]]].mean())))
            if focus[0][i, j] >= FOCUS > focus[1][i, j] else None for i, j in enumerate(focus[0].argmax(1))]


@dataclass
class FiltersAnswer:
    """What Q5's page shows (see the module's docstring)."""

    tuning: Tuning
    top: np.ndarray  # (filters, TOP_K) indices of each filter's strongest validation faces, one per photo
    valid: np.ndarray  # (faces,) informative (not blank) faces
    detected: np.ndarray  # (faces,) bool: the landmark detector found the face
    shifts: pd.DataFrame  # attribute_shift()'s table
    shift: np.ndarray  # (filters, attributes) mean within-class z of the top faces
    shift_p: np.ndarray  # (filters, attributes) its p against the shuffles
    top_class: np.ndarray  # (filters,) majority class of the K_SHOWN top faces
    top_count: np.ndarray  # (filters,) how many of them have it
    chosen: np.ndarray  # (shown,) the filters shown
    other: int | None  # the row of ``chosen`` whose AUROC class and top faces disagree
    parts: PartDrops  # of the shown filters on their TOP_K faces
    named: list  # per shown filter: the FACE_PARTS indices it looks at (PartDrops.named)
    aligned: dict  # aligned_class_means over each row's faces with landmarks: "face", "map" (drop), "shape"
    map_side: int  # side of the response map
    start: np.ndarray  # (48, 48) in [0, 1]: the mean validation face every grown face starts from
    grown: np.ndarray  # (shown, 48, 48) in [0, 1]: grown from it by gradient ascent on each shown filter
    growth: list  # per shown filter: (part, +1 lighter / -1 darker) its grown faces (two seeds) change, or None

    def traits(self, f: int) -> list[tuple[int, int]]:
        """Filter ``f``'s [(attribute index, sign)], largest shift first: its own p <= ``ALPHA`` against the shuffles,
        in an attribute and direction where more filters shift than chance gives (the table's "beyond chance")."""
        from fer_lib.data.face_attributes import ATTRIBUTES

        beyond = set(zip(*self.shifts[self.shifts["beyond chance"]][["attribute", "top faces"]].to_numpy().T))
        z = np.nan_to_num(self.shift[f])
        side = np.where(z > 0, "higher", "lower")
        return [(int(a), 1 if z[a] > 0 else -1) for a in np.argsort(-np.abs(z), kind="stable")
                if self.shift_p[f, a] <= ALPHA and (ATTRIBUTES[COMPARED[a]], side[a]) in beyond]


def filters_answer(model: nn.Module, images: np.ndarray, labels: np.ndarray, input_size: int = 48, seed: int = 0
                   ) -> FiltersAnswer:
    """Q5 on the validation faces ``images`` (uint8 (N, 48, 48)) and their ``labels``."""
    from fer_lib.core.io import default_cache_dir
    from fer_lib.data.duplicates import cached_duplicates
    from fer_lib.data.face_attributes import face_attributes
    from fer_lib.questions.q1_model import stage_map_sides
    from fer_lib.questions.q4_saliency import aligned_class_means

    responses = filter_responses(model, images, input_size)  # (faces, filters)
    valid = informative_faces(images)
    top = top_faces(responses, valid=valid, groups=cached_duplicates(images, cache_dir=default_cache_dir()).group)
    untrained = randomised_copy(model, seed)  # every layer re-initialised at random: the controls
    tuning = class_tuning(responses, filter_responses(untrained, images, input_size), labels,
                          model.fc[1].weight.detach().float().cpu().numpy(), valid)  # fc = Dropout + Linear
    attributes = face_attributes(images, cache_dir=default_cache_dir())
    shifts, shift, shift_p = attribute_shift(attributes[list(COMPARED)].to_numpy(), labels, top, valid, seed=seed)
    top_class, top_count = majority(top[:, :K_SHOWN], labels, len(tuning.auroc))
    detected = attributes["detected"].to_numpy(bool)
    chosen, other = pick_filters(tuning, top_class, top_count, detected[top].sum(1))
    parts = part_drops(model, images, top[chosen], chosen, responses, responses[valid].std(0), input_size)
    rows, flat = np.repeat(np.arange(len(chosen)), top.shape[1]), top[chosen].ravel()
    aligned = aligned_class_means(images[flat], parts.maps().reshape(-1, *images.shape[1:]),
                                  np.zeros((len(flat), *images.shape[1:])), parts.points.reshape(-1, 68, 2), rows,
                                  parts.found.ravel())
    start = images[valid].mean(0) / 255  # one start for every filter: the changes compare across rows
    grown = grow_faces(model, chosen, start, input_size, seed=seed)
    again = grow_faces(model, chosen, start, input_size, seed=seed + 1)  # other shifts: a part is named if both agree
    control = grow_faces(untrained, chosen, start, input_size, seed=seed)
    growth = [a if a == b else None for a, b in zip(*(growth_parts(start, x, control) for x in (grown, again)))]
    return FiltersAnswer(tuning, top, valid, detected, shifts, shift, shift_p, top_class,
                         top_count, chosen, other, parts, parts.named(), aligned,
                         stage_map_sides(model, input_size)[RESPONSE_LAYER.split(".")[0]], start, grown, growth)
