"""Q4, measured causally: cover one landmark region of a face at a time and measure the drop in the model's probability
of the true class, against the same shape and area covered away from the features (a control for the area removed).

A covered pixel takes the value of the face blurred heavily (``FILL_SIGMA``): the feature's detail goes, the face's
own brightness stays, and no edge appears at the patch's border (a black or mean-grey patch draws one, and a
network reacts to edges). Probabilities come from the model as it predicts (no test-time views), in batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fer_lib import CLASS_NAMES
from fer_lib.core.stats import percentile_interval
from fer_lib.data.regions import FEATURES, moved_off
from fer_lib.questions.q4_saliency import MIN_FACES

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

OCCLUDED = ("brows", "eyes", "nose", "mouth", "rest_of_face")  # covered one at a time (display order)
FILL_SIGMA = 4.0  # px of the 48-px face: a brow or an eye (3-6 px high) is blurred away, the shading stays
BOOTSTRAP = 2000  # resamples of the faces behind every 95% interval
ALL = "all classes"  # the row label of the pooled faces


def fill(faces: np.ndarray, sigma: float = FILL_SIGMA) -> np.ndarray:
    """(N, 48, 48) float faces in [0, 1] -> the same faces blurred (Gaussian, ``sigma`` px): what a patch shows."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(faces, np.float32), sigma=(0, sigma, sigma), mode="nearest")


def covered(grey: np.ndarray, blurred: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Faces (N, H, W) with the pixels of masks (N, K, H, W) replaced by the blurred face: (N, K, H, W)."""
    return np.where(masks, blurred[:, None], grey[:, None])


def controls(regions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{region: (N, H, W)} each occluded region's mask moved to where it overlaps least with the four features and
    with itself (:func:`fer_lib.data.regions.moved_off`): same shape and area, away from what is being tested."""
    features = np.any([regions[r] for r in FEATURES], axis=0)
    return {r: moved_off(regions[r], features | regions[r])[0] for r in OCCLUDED}


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
    left_out: int  # faces given without landmarks
    forward_passes: int
    table: pd.DataFrame  # (class, region), classes then ALL: drop, control and effect (= drop - control), each with
    # low / high (95% bootstrap over faces), sign (+1 / -1 where the effect's interval lies above / below 0), faces

    def top(self, n_boot: int = BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
        """Per class (and ALL): the region whose covering costs the most beyond its control, its numbers, whether its
        effect's interval lies above 0 ("clear"), and "tied": the other regions whose intervals lie above 0 and whose
        paired difference from it (the same faces resampled together, 95% bootstrap) does not exclude 0 (empty when
        it is not clear)."""
        import pandas as pd

        effect = self.drop - self.control_drop
        rng = np.random.default_rng(seed)
        rows = {}
        for cls, cells in self.table.groupby(level="class", sort=False):
            cells = cells.droplevel("class")
            best = cells["effect"].idxmax()
            b = cells.loc[best]
            members = np.arange(len(self.labels)) if cls == ALL else np.flatnonzero(
                self.labels == CLASS_NAMES.index(cls))
            resample = members[rng.integers(0, len(members), (n_boot, len(members)))]
            j = OCCLUDED.index(best)
            tied = []
            for r in cells.index:
                if r == best or not (b["low"] > 0 and cells.loc[r, "low"] > 0):
                    continue
                gap = (effect[:, j] - effect[:, OCCLUDED.index(r)])[resample].mean(1)
                if percentile_interval(gap)[0] <= 0:
                    tied.append(r)
            rows[cls] = {"region": best, **b.to_dict(), "clear": bool(b["low"] > 0), "tied": tied}
        out = pd.DataFrame(rows).T.rename_axis("class")
        return out.astype({c: float for c in ("drop", "control", "effect", "low", "high")} | {"faces": int})

def occlusion(model: nn.Module, faces: np.ndarray, labels: np.ndarray, regions: dict[str, np.ndarray],
              found: np.ndarray, input_size: int = 48, sigma: float = FILL_SIGMA, n_boot: int = BOOTSTRAP,
              seed: int = 0, batch_size: int = 256) -> Occlusion:
    """Cover each region of ``OCCLUDED`` (masks {region: (N, 48, 48)}), then its control, on every uint8 face
    (N, 48, 48) whose landmarks were ``found`` (N,); faces without them are left out and counted."""
    import pandas as pd

    from fer_lib.model.inference import predict_logits

    found = np.asarray(found, bool)
    index = np.flatnonzero(found)
    y = np.asarray(labels)[index]
    grey = np.asarray(faces)[index].astype(np.float32) / 255.0
    own = {r: np.asarray(regions[r])[index] for r in OCCLUDED}
    moved = controls({r: np.asarray(m)[index] for r, m in regions.items()})
    masks = np.stack([own[r] for r in OCCLUDED] + [moved[r] for r in OCCLUDED], 1)  # (n, 2R, H, W)
    features = np.any([np.asarray(regions[r])[index] for r in FEATURES], axis=0)
    on_features = np.stack([(moved[r] & (features | own[r])).sum((1, 2)) / np.maximum(own[r].sum((1, 2)), 1)
                            for r in OCCLUDED], 1)
    images = np.concatenate([grey[:, None], covered(grey, fill(grey, sigma), masks)], 1)  # (n, 1 + 2R, H, W)
    logits = predict_logits(model, torch.from_numpy(images.reshape(-1, *grey.shape[1:])), input_size, batch_size)
    probs = torch.softmax(logits, 1).numpy().reshape(len(index), images.shape[1], -1)[np.arange(len(index)), :, y]
    k = len(OCCLUDED)
    drop, control = probs[:, :1] - probs[:, 1:1 + k], probs[:, :1] - probs[:, 1 + k:]
    effect = drop - control

    rng = np.random.default_rng(seed)
    groups = [(CLASS_NAMES[c], np.flatnonzero(y == c)) for c in np.unique(y) if (y == c).sum() >= MIN_FACES]
    groups.append((ALL, np.arange(len(y))))
    rows = {}
    for name, members in groups:
        if not len(members):
            continue
        resample = members[rng.integers(0, len(members), (n_boot, len(members)))]
        cell = {}
        for key, values in (("drop", drop), ("control", control), ("effect", effect)):
            low, high = percentile_interval(values[resample].mean(1))
            label = "" if key == "effect" else f"{key} "
            cell[key] = (values[members].mean(0), low, high, label)
        for j, r in enumerate(OCCLUDED):
            row = {}
            for key, (mean, low, high, label) in cell.items():
                row |= {key: mean[j], f"{label}low": low[j], f"{label}high": high[j]}
            rows[(name, r)] = row | {"faces": len(members)}
    columns = ["drop", "drop low", "drop high", "control", "control low", "control high", "effect", "low", "high",
               "faces"]
    table = pd.DataFrame([rows[k] for k in rows], columns=columns,
                         index=pd.MultiIndex.from_tuples(list(rows), names=["class", "region"]))
    table = table.astype(float).astype({"faces": int})
    table.insert(table.columns.get_loc("high") + 1, "sign",
                 np.where(table["low"] > 0, 1, np.where(table["high"] < 0, -1, 0)).astype(int))
    return Occlusion(index, y, probs[:, 0], drop, control, on_features, int((~found).sum()),
                     int(images.shape[0] * images.shape[1]), table)


def attribution_agreement(top: pd.DataFrame, by_class: pd.DataFrame, methods: list[str], area: dict[str, float]
                          ) -> pd.DataFrame:
    """Per class with occlusion and attribution rows: for each method of ``methods`` with per-class rows
    (``by_class``: index (class, method, region), column "difference", the map's share beyond the randomised
    network), the occluded region that holds the most of its mass per unit of area (``area``: region -> share of
    the frame; a large region holds more mass by its size alone, as it costs more to cover); "agree": how many of
    those methods name the
    costliest region to cover or one tied with it, "methods": how many name a region (a method whose maps of the
    class hold no mass names none), "agrees": more than half of those do; "<method> agrees": whether that method
    names it (None where it names no region); "chance": the share of the occluded regions that count as a match
    (the costliest and those tied with it), what a method naming a region at random matches on average.
    Only classes whose costliest region is clear (``top``'s "clear") have rows."""
    import pandas as pd

    have = [m for m in methods if m in set(by_class.index.get_level_values("method"))]
    classes = set(by_class.index.get_level_values("class"))

    def most_mass(cls: str, method: str) -> str | None:
        if (cls, method) not in by_class.index.droplevel("region"):
            return None  # no rows: every map of the class is empty (all zero)
        shares = by_class["difference"].xs((cls, method), level=("class", "method")).reindex(list(OCCLUDED))
        shares = (shares / pd.Series(area).reindex(list(OCCLUDED))).dropna()
        return shares.idxmax() if len(shares) else None  # None: no map of the class has mass (an all-zero map)

    rows = {}
    for cls in top.index:
        if not top.loc[cls, "clear"] or cls not in classes:
            continue
        costly = {top.loc[cls, "region"], *top.loc[cls, "tied"]}
        row = {m: most_mass(cls, m) for m in have}
        named = [m for m in have if row[m] is not None]
        if not named:
            continue
        agrees = {f"{m} agrees": row[m] in costly if row[m] is not None else None for m in have}
        agree = sum(row[m] in costly for m in named)
        rows[cls] = row | agrees | {"occlusion": top.loc[cls, "region"], "agree": agree, "methods": len(named),
                                    "agrees": agree > len(named) / 2,
                                    "chance": len(costly) / len(OCCLUDED)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("class")
