"""Face regions as pixel masks from each face's own 68 landmarks (Q4), and how much of a map falls in each: six
regions partition the 48-px frame (brows, eyes, nose, mouth, rest of the face, outside it). Margins scale with the
distance between the eye centres, so a small or turned face gets small regions where its features are."""
from __future__ import annotations

import numpy as np

from fer_lib.data.landmarks import JAW, LEFT_BROW, LEFT_EYE, MOUTH, NOSE, RIGHT_BROW, RIGHT_EYE

FRAME = 48  # landmarks and masks are in the 48-px frame of a FER2013 face
# margins, as shares of the distance between the eye centres (about 17 px on a frontal FER2013 face)
EYE_MARGIN = 0.15  # around the hull of each eye's six points: the lids and the lash line
BROW_HALF_WIDTH = 0.12  # each side of the brow's five points (a brow is a line of points, not an outline)
NOSE_MARGIN = 0.10  # around the hull of the bridge and nostril points
MOUTH_MARGIN = 0.10  # around the outer lip outline
FOREHEAD = 0.5  # the face outline closes above the brows raised by this much (the lower forehead is face)

# the landmark regions, in the order that settles overlaps (an eye pixel near a brow is an eye pixel)
FEATURES = ("eyes", "brows", "mouth", "nose")
LANDMARK_REGIONS = ("brows", "eyes", "nose", "mouth", "rest_of_face", "outside_face")  # display order

REGION_LABELS = {"brows": "brows", "eyes": "eyes", "nose": "nose", "mouth": "mouth",
                 "rest_of_face": "rest of the face", "outside_face": "area outside the face"}
REGION_SHORT = {**REGION_LABELS, "rest_of_face": "rest of face", "outside_face": "outside face"}  # small tiles


def _hull(points: np.ndarray) -> np.ndarray:
    """The convex hull's vertices in order; a degenerate set (all on one line) comes back as given."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        return points[ConvexHull(points).vertices]
    except QhullError:
        return points


def _distance_to_segments(xy: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P,) distance of each point to the nearest of the segments a[k] -> b[k]."""
    d = b - a  # (K, 2)
    t = ((xy[:, None, :] - a[None]) * d[None]).sum(-1) / np.maximum((d * d).sum(-1), 1e-12)[None]
    return np.linalg.norm(xy[:, None, :] - (a[None] + np.clip(t, 0, 1)[..., None] * d[None]), axis=-1).min(1)


def _inside(xy: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(P,) whether each point lies inside the closed polygon (even-odd rule)."""
    x, y = xy[:, :1], xy[:, 1:]
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = ((y0 > y) != (y1 > y)) & (x < x0 + (y - y0) * (x1 - x0) / np.where(y1 != y0, y1 - y0, 1e-12))
    return crosses.sum(1) % 2 == 1


def _near_hull(xy: np.ndarray, points: np.ndarray, margin: float) -> np.ndarray:
    hull = _hull(points)
    return _inside(xy, hull) | (_distance_to_segments(xy, hull, np.roll(hull, -1, 0)) <= margin)


def face_outline(points: np.ndarray) -> np.ndarray:
    """(K, 2) the face's outline for one face's landmarks (68, 2): the hull of the jaw line and of the brows
    raised along the face's own vertical (perpendicular to the line through the eyes) by ``FOREHEAD``."""
    across = points[LEFT_EYE].mean(0) - points[RIGHT_EYE].mean(0)  # towards the image's right on a frontal face
    d = max(float(np.linalg.norm(across)), 1e-6)
    up = np.array([across[1], -across[0]]) / d  # rotated a quarter turn: towards the top of the head
    brows = np.concatenate([points[RIGHT_BROW], points[LEFT_BROW]]) + FOREHEAD * d * up
    return _hull(np.concatenate([points[JAW], brows]))


def landmark_regions(points: np.ndarray) -> dict[str, np.ndarray]:
    """{region: (N, 48, 48) bool} for landmarks (N, 68, 2) in the 48-px frame; the six regions of
    ``LANDMARK_REGIONS`` partition every face's frame (each pixel in exactly one)."""
    points = np.asarray(points, dtype=np.float64)
    y, x = np.meshgrid(np.arange(FRAME, dtype=float), np.arange(FRAME, dtype=float), indexing="ij")
    xy = np.stack([x.ravel(), y.ravel()], 1)  # pixel centres (pixel i at x = i)
    out = {r: np.zeros((len(points), FRAME, FRAME), bool) for r in LANDMARK_REGIONS}
    eye_distance = np.linalg.norm(points[:, LEFT_EYE].mean(1) - points[:, RIGHT_EYE].mean(1), axis=-1)
    for i, (p, d) in enumerate(zip(points, eye_distance)):
        masks = {
            "eyes": _near_hull(xy, p[RIGHT_EYE], EYE_MARGIN * d) | _near_hull(xy, p[LEFT_EYE], EYE_MARGIN * d),
            "brows": np.any([_distance_to_segments(xy, b[:-1], b[1:]) <= BROW_HALF_WIDTH * d  # a brow is a line
                             for b in (p[RIGHT_BROW], p[LEFT_BROW])], 0),
            "mouth": _near_hull(xy, p[MOUTH][:12], MOUTH_MARGIN * d),  # 48-59: the outer lip
            "nose": _near_hull(xy, p[NOSE], NOSE_MARGIN * d),
        }
        taken = np.zeros(len(xy), bool)
        for name in FEATURES:
            masks[name] &= ~taken
            taken |= masks[name]
        face = _inside(xy, face_outline(p)) | taken
        masks["rest_of_face"], masks["outside_face"] = face & ~taken, ~face
        for name, mask in masks.items():
            out[name][i] = mask.reshape(FRAME, FRAME)
    return out


def region_shares(maps: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per map (B, H, W), the share of its total attribution inside each region (masks (H, W) or (B, H, W)).

    An all-zero map has no distribution over the face: its shares are nan.
    """
    total = maps.reshape(len(maps), -1).sum(1)
    total = np.where(total > 0, total, np.nan)
    return {name: (maps * mask).reshape(len(maps), -1).sum(1) / total for name, mask in regions.items()}


def moved_off(masks: np.ndarray, avoid: np.ndarray) -> np.ndarray:
    """The same shapes moved off what to avoid: for masks and ``avoid`` (N, H, W) bool, each mask rolled (shifted,
    wrapping round the frame's edges, so shape and area are kept exactly) to the shift that overlaps ``avoid`` least,
    the smallest such shift first. The control of an occlusion (Q4): the same area covered away from the features."""
    masks, avoid = np.asarray(masks, bool), np.asarray(avoid, bool)
    n, h, w = masks.shape
    # overlap[s] = sum_p mask[p] * avoid[p + s], for every cyclic shift s at once (FFT cross-correlation)
    overlap = np.fft.irfft2(np.conj(np.fft.rfft2(masks)) * np.fft.rfft2(avoid), s=(h, w)).round()  # (N, H, W)
    dy = np.minimum(np.arange(h), h - np.arange(h))[:, None]
    dx = np.minimum(np.arange(w), w - np.arange(w))[None, :]
    distance = (dy ** 2 + dx ** 2) / (h * h + w * w)  # < 1: breaks ties between equal overlaps only
    best = (overlap + distance).reshape(n, -1).argmin(1)
    shifts = np.stack(np.unravel_index(best, (h, w)), 1)
    return np.stack([np.roll(m, tuple(s), axis=(0, 1)) for m, s in zip(masks, shifts)])
