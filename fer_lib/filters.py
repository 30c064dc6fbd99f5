"""Q5: what the last convolution layer's filters respond to.

A filter's *response* is its channel of ``layer4.1.bn2`` (the last convolution, ``layer4.1.conv2``,
followed by its BatchNorm, a per-channel affine map), averaged over positions: positive means the
filter fires. Three views: images made by gradient ascent on the input, the validation faces that
excite the filter most, and its activation map on one face.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LAST_CONV = "layer4.1.conv2"
RESPONSE_LAYER = "layer4.1.bn2"


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


@torch.no_grad()
def filter_responses(model: nn.Module, images: np.ndarray, input_size: int = 48, batch_size: int = 256,
                     layer: str = RESPONSE_LAYER) -> tuple[np.ndarray, np.ndarray]:
    """(mean response (N, C), activation maps (N, C, h, w)) of ``layer`` for uint8 faces (N, 48, 48)."""
    from .model import preprocess

    twin = copy.deepcopy(model).eval()
    maps = []
    with capture(twin, layer) as store:
        for start in range(0, len(images), batch_size):
            twin(preprocess(torch.as_tensor(images[start:start + batch_size]), input_size))
            maps.append(store["out"].float())
    maps = torch.cat(maps)
    return maps.mean((2, 3)).numpy(), maps.numpy()


def inactive_filters(responses: np.ndarray) -> np.ndarray:
    """Filters whose response is never positive on any of the faces given."""
    return np.flatnonzero(responses.max(0) <= 0)


def top_faces(responses: np.ndarray, filters: np.ndarray, k: int = 9) -> np.ndarray:
    """(len(filters), k) indices of the faces with the strongest response, strongest first."""
    return np.argsort(-responses[:, filters], axis=0)[:k].T


def class_mix(labels: np.ndarray, top: np.ndarray, n_classes: int = 7) -> np.ndarray:
    """(len(filters), n_classes): share of each class among each filter's top faces."""
    return np.stack([np.bincount(labels[row], minlength=n_classes) / len(row) for row in top])


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
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
    """
    from .model import IMAGENET_MEAN, IMAGENET_STD

    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    filters = torch.as_tensor(np.asarray(filters), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    # optimise a gray image in [0, 1] space (through a sigmoid), starting from gray plus visible noise:
    # from a nearly flat image some filters get no gradient at all (every path to them is cut by a ReLU)
    logits = (torch.randn(len(filters), 1, input_size, input_size, generator=g) * init_noise).requires_grad_()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    optimizer = torch.optim.Adam([logits], lr=lr)
    index = torch.arange(len(filters))

    def response(img: torch.Tensor, store) -> torch.Tensor:
        twin((img.expand(-1, 3, -1, -1) - mean) / std)
        return store["out"][index, filters].mean((1, 2))  # (F,)

    with capture(twin, layer) as store:
        with torch.no_grad():
            before = response(torch.sigmoid(logits), store).numpy()
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
            after = response(final, store).numpy()
    return final[:, 0].numpy(), before, after


def pick_filters(responses: np.ndarray, labels: np.ndarray, n: int = 32) -> np.ndarray:
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
    return np.array(chosen)


def mix_caption(mix_row: np.ndarray, k: int = 9) -> str:
    """'Surprise 8, Fear 1': how many of a filter's k top faces belong to each class, commonest first."""
    from . import CLASS_NAMES

    counts = np.round(mix_row * k).astype(int)
    return ", ".join(f"{CLASS_NAMES[c]} {counts[c]}" for c in np.argsort(-counts, kind="stable") if counts[c])
