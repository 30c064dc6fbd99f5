"""Q4, measured causally: cover one landmark region of a face at a time (Captum's ``FeatureAblation``) and measure the
drop in the model's probability of the true class (no test-time views), against the same shape and area covered away
from the features. A covered pixel takes the value of the face blurred heavily: the feature's detail goes, its
brightness stays, and no edge appears at the patch's border (a black or mean-grey patch draws one)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from fer_lib import CLASS_NAMES
from fer_lib.data.regions import FEATURES, LANDMARK_REGIONS, moved_off

OCCLUDED = LANDMARK_REGIONS[:5]  # brows, eyes, nose, mouth, rest of the face: covered one at a time
FILL_SIGMA = 4.0  # px of the 48-px face: a brow or an eye (3-6 px high) is blurred away, the shading stays
ALL = "all classes"  # the row label of the pooled faces
BOOTSTRAP = 2000  # resamples of the faces behind every 95% interval
MIN_FACES = 5  # a class with fewer faces (with landmarks) gets no per-class rows
COLUMNS = ("drop", "drop low", "drop high", "control", "control low", "control high", "effect", "low", "high")


def captum_attr():
    """``captum.attr``, without the warning tqdm.auto gives in a notebook without ipywidgets (no bars here)."""
    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        import captum.attr
    return captum.attr


def interval_sign(low, high) -> np.ndarray:
    """+1 where a difference's 95% interval lies above 0, -1 below, 0 where it holds 0 (no clear difference)."""
    return np.where(np.asarray(low) > 0, 1, np.where(np.asarray(high) < 0, -1, 0)).astype(int)


def mean_interval(values: np.ndarray, n_boot: int = BOOTSTRAP, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile bootstrap interval (low, high) of the column means of ``values`` (n, K), the rows (faces)
    resampled together for every column (scipy.stats.bootstrap); NaN values are left out of each mean."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return np.full(values.shape[1:], np.nan), np.full(values.shape[1:], np.nan)
    with warnings.catch_warnings():  # a resample holding nothing but NaN in a column has no mean
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = bootstrap((values,), lambda x, axis: np.nanmean(x, axis=axis), n_resamples=n_boot, axis=0,
                       method="percentile", random_state=rng).confidence_interval
    return ci.low, ci.high


def fill(faces: np.ndarray, sigma: float = FILL_SIGMA) -> np.ndarray:
    """(N, 48, 48) float faces in [0, 1] -> the same faces blurred (Gaussian, ``sigma`` px): what a patch shows."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(faces, np.float32), sigma=(0, sigma, sigma), mode="nearest")


def controls(regions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{region: (N, H, W)} each occluded region's mask moved to where it overlaps least with the four features and
    with itself (:func:`fer_lib.data.regions.moved_off`): same shape and area, away from what is being tested."""
    features = np.any([regions[r] for r in FEATURES], axis=0)
    return {r: moved_off(regions[r], features | regions[r]) for r in OCCLUDED}


@dataclass
class Occlusion:
    """Drops in the probability of the true class (fractions: 0.05 = 5 percentage points) of the faces with
    landmarks, when a region is covered and when its control is; the effect of a region is the difference."""

    index: np.ndarray  # (n,) indices (into the faces given) of the faces that count: those with landmarks
    labels: np.ndarray  # (n,) their classes
    intact: np.ndarray  # (n,) P(true class) of the uncovered face
    drop: np.ndarray  # (n, R) intact minus covered, per region of OCCLUDED
    control_drop: np.ndarray  # (n, R) the same with the control patch covered
    control_on_features: np.ndarray  # (n, R) share of the control patch's pixels on a feature or on its own region
    table: pd.DataFrame  # (class, region), classes then ALL: drop, control and effect (= drop - control), each with
    # low / high (95% bootstrap over faces), sign (+1 / -1 where the effect's interval lies above / below 0), faces

    def top(self, n_boot: int = BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
        """Per class (and ALL): the region whose covering costs the most beyond its control, its numbers, whether its
        effect's interval lies above 0 ("clear"), and "tied": the other regions whose intervals lie above 0 and whose
        paired difference from it (the same faces resampled together, 95% bootstrap) does not exclude 0 (empty when
        it is not clear); "verdict": "one part" (clear, no tie), "several parts" (clear, tied) or "none"."""
        effect = self.drop - self.control_drop
        rng = np.random.default_rng(seed)
        rows = {}
        for cls, cells in self.table.groupby(level="class", sort=False):
            cells = cells.droplevel("class")
            best = cells["effect"].idxmax()
            b = cells.loc[best]
            members = self.labels >= 0 if cls == ALL else self.labels == CLASS_NAMES.index(cls)
            others = [r for r in cells.index if r != best and b["low"] > 0 and cells.loc[r, "low"] > 0]
            gaps = effect[members][:, [OCCLUDED.index(best)]] - effect[members][:, [OCCLUDED.index(r) for r in others]]
            tied = [r for r, low in zip(others, mean_interval(gaps, n_boot, rng)[0]) if low <= 0] if others else []
            verdict = "one part" if b["low"] > 0 and not tied else "several parts" if tied else "none"
            rows[cls] = {"region": best, **b.to_dict(), "clear": bool(b["low"] > 0), "tied": tied, "verdict": verdict}
        out = pd.DataFrame(rows).T.rename_axis("class")
        return out.astype(dict.fromkeys(("drop", "control", "effect", "low", "high"), float) | {"faces": int,
                                                                                               "clear": bool})


def occlusion(model: nn.Module, faces: np.ndarray, labels: np.ndarray, regions: dict[str, np.ndarray],
              found: np.ndarray, input_size: int = 48, n_boot: int = BOOTSTRAP, seed: int = 0) -> Occlusion:
    """Cover each region of ``OCCLUDED`` (masks {region: (N, 48, 48)}, a partition of each frame), then its control,
    on every uint8 face (N, 48, 48) whose landmarks were ``found`` (N,). The regions are ``FeatureAblation``'s feature
    mask, the blurred face its baseline; the controls overlap each other and the regions, so each is covered in its
    own copy of the face."""
    from fer_lib.model.inference import predict_logits

    found = np.asarray(found, bool)
    index = np.flatnonzero(found)
    y = np.asarray(labels)[index]
    n, k = len(index), len(OCCLUDED)
    grey = np.asarray(faces)[index].astype(np.float32) / 255.0
    blurred = fill(grey)
    own = {r: np.asarray(regions[r])[index] for r in LANDMARK_REGIONS}
    moved = controls(own)
    features = np.any([own[r] for r in FEATURES], axis=0)
    on_features = np.stack([(moved[r] & (features | own[r])).sum((1, 2)) / np.maximum(own[r].sum((1, 2)), 1)
                            for r in OCCLUDED], 1)

    def probs(x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) grey faces -> (B, 7)
        return torch.softmax(predict_logits(model, x[:, 0], input_size), 1)

    feature_mask = torch.from_numpy(np.argmax(np.stack([own[r] for r in LANDMARK_REGIONS], 1), 1)[:, None])
    ablated = captum_attr().FeatureAblation(probs).attribute(
        torch.from_numpy(grey[:, None]), baselines=torch.from_numpy(blurred[:, None]), target=torch.as_tensor(y),
        feature_mask=feature_mask).numpy()[:, 0]  # P(intact) - P(region ablated), on every pixel of the region
    drop = np.stack([(ablated * own[r]).sum((1, 2)) / np.maximum(own[r].sum((1, 2)), 1) for r in OCCLUDED], 1)
    with_controls = np.concatenate([grey[:, None], np.where(np.stack([moved[r] for r in OCCLUDED], 1),
                                                            blurred[:, None], grey[:, None])], 1)  # (n, 1 + k, H, W)
    p = probs(torch.from_numpy(with_controls.reshape(-1, 1, *grey.shape[1:]))).numpy().reshape(n, 1 + k, -1)
    intact = p[np.arange(n), 0, y]
    control = intact[:, None] - p[np.arange(n), 1:, y]  # (n, k)

    rng = np.random.default_rng(seed)
    groups = [(CLASS_NAMES[c], y == c) for c in np.unique(y) if (y == c).sum() >= MIN_FACES] + [(ALL, y >= 0)]
    rows = {}
    for name, members in groups:
        values = np.concatenate([drop, control, drop - control], 1)[members]  # resampled together
        stats = np.stack([values.mean(0), *mean_interval(values, n_boot, rng)]).reshape(3, 3, k)  # (mean/low/high,
        stats = stats.transpose(1, 0, 2).reshape(9, k)  # drop/control/effect, R) -> (the 9 columns, R)
        for j, r in enumerate(OCCLUDED):
            rows[(name, r)] = dict(zip(COLUMNS, stats[:, j])) | {"faces": int(members.sum())}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis(["class", "region"])
    table.insert(table.columns.get_loc("high") + 1, "sign", interval_sign(table["low"], table["high"]))
    return Occlusion(index, y, intact, drop, control, on_features, table)


def attribution_agreement(top: pd.DataFrame, by_class: pd.DataFrame, methods: list[str], area: dict[str, float]
                          ) -> pd.DataFrame:
    """Per class whose costliest region is clear (``top``'s "clear") and with attribution rows (``by_class``: index
    (class, method, region), column "difference", the map's share beyond the randomised network): for each method of
    ``methods`` the occluded region holding the most of its mass per unit of ``area`` (region -> share of the frame:
    a large region holds more mass by its size alone), None where its maps of the class are empty; "<method> agrees"
    whether that is the costliest region or one tied with it; "agree" how many of the "methods" naming a region do;
    "agrees" more than half; "chance" the share of the occluded regions that count as a match."""
    have = [m for m in methods if m in set(by_class.index.get_level_values("method"))]
    per_area = by_class["difference"].unstack("region").reindex(columns=list(OCCLUDED)) / pd.Series(area)[
        list(OCCLUDED)]
    rows = {}
    for cls in top.index[top["clear"].astype(bool)]:
        costly = {top.loc[cls, "region"], *top.loc[cls, "tied"]}
        row = {m: per_area.loc[(cls, m)].dropna().idxmax() if (cls, m) in per_area.index
               and per_area.loc[(cls, m)].notna().any() else None for m in have}
        named = [m for m in have if row[m] is not None]
        if named:
            agree = sum(row[m] in costly for m in named)
            rows[cls] = row | {f"{m} agrees": row[m] in costly if row[m] else None for m in have} | {
                "occlusion": top.loc[cls, "region"], "agree": agree, "methods": len(named),
                "agrees": agree > len(named) / 2, "chance": len(costly) / len(OCCLUDED)}
    columns = [*have, *(f"{m} agrees" for m in have), "occlusion", "agree", "methods", "agrees", "chance"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("class")  # columns: none clear
