"""Q5: what the last convolution layer's filters respond to. A filter's *response* is its channel of
``layer4.1.bn2`` (the last convolution and its BatchNorm) averaged over positions. Four views: the validation faces
that excite it most; its tuning to each class (AUROC) against the same filter of a randomly initialised network, and
its vote in the final layer; where on its top faces its response depends (each face part blurred in turn); what
its top faces share beyond their class."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import false_discovery_control, norm, rankdata
from torch import nn

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
SECOND = 0.75  # a second part is named with the first when its mean drop reaches this share of the first's
COMPARED = ("mouth_open", "eye_open", "brow_height", "head_turn", "brightness", "contrast")  # of face_attributes
FACE_PARTS = ("brows", "eyes", "nose", "mouth")  # landmark regions blurred one at a time
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


def majority(top: np.ndarray, labels: np.ndarray, n_classes: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(F,) the most common class among each filter's top faces ``top`` (F, k) and (F,) how many of them have it."""
    counts = np.stack([np.bincount(row, minlength=n_classes) for row in np.asarray(labels)[top]])
    return counts.argmax(1), counts.max(1)


def pick_filters(tuning: Tuning, top_class: np.ndarray, top_count: np.ndarray) -> tuple[np.ndarray, int | None]:
    """The filters shown: per class its clearest one-class filter (preferred class, majority of its top faces and
    vote all agree; most top faces of the class, then the largest AUROC margin over the random network), then the
    clearest tuned filter whose top faces' majority is another class than its AUROC's (its row, or None)."""
    margin = tuning.best - tuning.random_best
    agree = tuning.one_class & (top_class == tuning.preferred) & tuning.votes
    chosen = [int(max(f, key=lambda i: (top_count[i], margin[i]))) for c in range(len(tuning.auroc))
              if len(f := np.flatnonzero(agree & (tuning.preferred == c)))]
    other = np.flatnonzero(tuning.one_class & (top_class != tuning.preferred))
    if not len(other):
        return np.array(chosen, dtype=np.int64), None
    return np.array([*chosen, int(max(other, key=lambda i: (top_count[i], margin[i])))], dtype=np.int64), len(chosen)


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
                    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """How each filter's top faces ``top`` (F, k) differ from faces of their classes in attribute columns ``values``
    (N, A): the mean within-class z of its top faces counts at p <= ``ALPHA`` against ``n_permutations`` shuffles of
    the rows among the (``valid``) faces of each class. Per attribute and direction: the filters whose top faces are
    higher / lower, the count under shuffles (mean, 95% upper bound) and "beyond chance" (above the bound); and per
    filter and attribute (F, A) the shift and its two-sided p against the shuffles (1 where unmeasured)."""
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
    """What each shown filter loses when one part (``FACE_PARTS``) of one of its top faces is blurred away, in
    standard deviations of its response over the validation faces: ``drop`` (shown, k, parts) for the filter,
    ``average`` the mean of that over all filters (the control: what any filter loses), NaN where the detector
    missed the face; ``masks`` (shown, k, parts, 48, 48) the parts and ``points`` (shown, k, 68, 2) the landmarks."""

    drop: np.ndarray
    average: np.ndarray
    masks: np.ndarray
    points: np.ndarray
    found: np.ndarray  # (shown, k)

    def named(self, alpha: float = ALPHA) -> list[list[int]]:
        """Per filter the parts it looks at: the part with the largest mean drop where its drop is above zero and
        above the average filter's (one-sided t-tests over the faces with landmarks, each times the parts), and the
        next one too where it passes as well and its drop reaches ``SECOND`` of the first's; [] otherwise."""
        from scipy.stats import ttest_1samp

        out = []
        for drop, average in zip(self.drop, self.average):
            ok = np.isfinite(drop[:, 0])
            tests = [ttest_1samp(x, 0, alternative="greater").pvalue for x in (drop[ok], drop[ok] - average[ok])]
            passes = np.maximum(*tests) * len(FACE_PARTS) <= alpha if ok.sum() >= 3 else np.zeros(len(FACE_PARTS), bool)
            mean = drop[ok].mean(0) if ok.any() else np.zeros(len(FACE_PARTS))
            first, second = np.argsort(-mean, kind="stable")[:2]
            both = passes[second] and mean[second] >= SECOND * mean[first]
            out.append([int(first), int(second)][:1 + both] if passes[first] else [])
        return out

    def maps(self) -> np.ndarray:
        """(shown, k, 48, 48): each face's parts filled with the filter's drop for them (0 elsewhere, NaN-free)."""
        return np.einsum("skp,skpij->skij", np.nan_to_num(self.drop), self.masks)


def part_drops(model: nn.Module, images: np.ndarray, faces: np.ndarray, filters: np.ndarray, responses: np.ndarray,
               scale: np.ndarray, input_size: int = 48) -> PartDrops:
    """:class:`PartDrops` of ``filters`` (shown,) on their faces ``faces`` (shown, k) of uint8 ``images``, whose
    responses (N, all filters) are ``responses`` and their standard deviations ``scale``. A part is blurred as Q4
    covers it (a Gaussian of the face); only faces the detector finds go through the network again."""
    from fer_lib.data.landmarks import face_landmarks
    from fer_lib.data.regions import landmark_regions
    from fer_lib.questions.q4_occlusion import fill

    flat = np.asarray(faces).ravel()
    points, found = face_landmarks(images[flat])
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


@dataclass
class FiltersAnswer:
    """What Q5's page shows: every filter's tuning against an untrained network and the last layer's votes, what
    its top faces share beyond their class, and for the filters shown where on their top faces they look."""

    tuning: Tuning
    top: np.ndarray  # (filters, TOP_K) indices of each filter's strongest validation faces, one per photo
    valid: np.ndarray  # (faces,) informative (not blank) faces
    detected: float  # share of the faces the landmark detector found
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
    tuning = class_tuning(responses, filter_responses(randomised_copy(model, seed), images, input_size), labels,
                          model.fc[1].weight.detach().float().cpu().numpy(), valid)  # fc = Dropout + Linear
    attributes = face_attributes(images, cache_dir=default_cache_dir())
    shifts, shift, shift_p = attribute_shift(attributes[list(COMPARED)].to_numpy(), labels, top, valid, seed=seed)
    top_class, top_count = majority(top[:, :K_SHOWN], labels, len(tuning.auroc))
    chosen, other = pick_filters(tuning, top_class, top_count)
    parts = part_drops(model, images, top[chosen], chosen, responses, responses[valid].std(0), input_size)
    rows = np.repeat(np.arange(len(chosen)), top.shape[1])
    flat = top[chosen].ravel()
    aligned = aligned_class_means(images[flat], parts.maps().reshape(-1, *images.shape[1:]),
                                  np.zeros((len(flat), *images.shape[1:])), parts.points.reshape(-1, 68, 2), rows,
                                  parts.found.ravel())
    return FiltersAnswer(tuning, top, valid, float(attributes["detected"].mean()), shifts, shift, shift_p, top_class,
                         top_count, chosen, other, parts, parts.named(), aligned,
                         stage_map_sides(model, input_size)[RESPONSE_LAYER.split(".")[0]])
