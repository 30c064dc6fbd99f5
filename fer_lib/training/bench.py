"""`make bench`: images/s of training pipelines with one model and batch size, and CSV load times.

(a) plain eager float32 step on random tensors (NCHW)              - the hardware baseline
(b) this project's training loop: uint8 faces -> batched augmentation -> its step
(c) the conventional pipeline: PIL Dataset + per-image torchvision transforms + DataLoader(2 workers)
(d) this project's step alone on random tensors
plus the step variants that were measured to choose (d): channels-last, bfloat16 autocast, batch 256.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def _timed(step, batch_size: int, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - start)


def _plain_step(batch_size: int, channels_last: bool = False, bf16: bool = False, size: int = 48):
    from fer_lib.model.network import build_model

    model, _ = build_model("random")
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch_size, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch_size,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _recipe_step(images: np.ndarray, labels: np.ndarray, batch_size: int, profile: str, precision: str):
    """One step of a profile's recipe (its input size and optimiser) at a given precision."""
    from fer_lib.model.network import build_model
    from fer_lib.training.runs import config_for
    from fer_lib.training.train import make_optimizer, train_step

    config = config_for(profile, batch_size=batch_size, weights="random")
    model, _ = build_model("random")
    model.to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, config, len(images) // batch_size)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.from_numpy(images[:batch_size]), torch.from_numpy(labels[:batch_size])

    def step():
        train_step(model, opt, sched, x, y, config, None, gen, torch.device("cpu"), precision)

    return step


def _project_loop(images: np.ndarray, labels: np.ndarray, batch_size: int):
    from fer_lib.model.network import build_model
    from fer_lib.training.runs import TrainConfig
    from fer_lib.training.train import make_optimizer, train_step

    config = TrainConfig(batch_size=batch_size, weights="random")
    model, _ = build_model("random")
    model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(images) // batch_size
    opt, sched = make_optimizer(model, config, steps_per_epoch)
    faces, targets = torch.from_numpy(images), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(0)
    state = {"i": 0}

    def step():
        idx = torch.randint(0, len(faces), (batch_size,), generator=gen)
        model.train()
        train_step(model, opt, sched, faces[idx], targets[idx], config, None, gen, torch.device("cpu"))
        state["i"] += 1

    return step


class _PILFaces(torch.utils.data.Dataset):
    """What a student would write: one PIL image per item, transformed one at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision import transforms as T

        self.images, self.labels = images, labels
        self.transform = T.Compose([T.Grayscale(3), T.RandomHorizontalFlip(),
                                    T.RandomAffine(10, (0.1, 0.1), (0.9, 1.1)),
                                    T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                    T.RandomErasing(p=0.25)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _conventional(images: np.ndarray, labels: np.ndarray, batch_size: int, steps: int) -> float:
    from fer_lib.model.network import build_model

    model, _ = build_model("random")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(_PILFaces(images, labels), batch_size=batch_size, shuffle=True,
                                         num_workers=2, drop_last=True, persistent_workers=False)
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 2:  # the first batches include worker start-up
            start, seen = time.perf_counter(), 0
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
        if i >= steps + 1:
            break
    return seen / (time.perf_counter() - start)


def _load_times(data: str | None) -> dict:
    """Seconds to parse train.csv.gz: this project (no cache), its cache, and pandas + per-row split."""
    if not data:
        return {}
    import pandas as pd

    from fer_lib.data.layouts import first_existing, read_homework_csv

    path = first_existing(Path(data), "train.csv.gz", "train.csv") if Path(data).is_dir() else Path(data)
    if path is None:
        return {}
    t = time.perf_counter()
    read_homework_csv(path, cache_dir=None)
    fast = time.perf_counter() - t
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        read_homework_csv(path, cache_dir=Path(cache))
        t = time.perf_counter()
        read_homework_csv(path, cache_dir=Path(cache))
        cached = time.perf_counter() - t
    t = time.perf_counter()
    table = pd.read_csv(path)
    np.stack([np.array(s.split(), dtype=np.uint8) for s in table["feature"]])
    naive = time.perf_counter() - t
    return {"file": str(path), "fer_lib_seconds": fast, "fer_lib_cached_seconds": cached, "pandas_split_seconds": naive}


def run_bench(data: str | None = None, batch_size: int = 128, steps: int = 8,
              out: str | None = "runs/bench.json") -> dict:
    from fer_lib.training.runs import default_threads

    torch.set_num_threads(default_threads())
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2048, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 7, 2048)
    results = {"threads": torch.get_num_threads(), "batch_size": batch_size, "steps": steps, "images_per_second": {}}
    ips = results["images_per_second"]

    def measure(name: str, value) -> None:
        ips[name] = round(value, 1)
        print(f"  {name:58s} {value:7.1f} img/s", flush=True)

    print(f"training throughput, batch {batch_size}, {torch.get_num_threads()} threads:")
    measure("(a) plain eager fp32 step, random tensors", _timed(_plain_step(batch_size), batch_size, steps))
    measure("(b) fer_lib training loop incl. augmentation",
            _timed(_project_loop(images, labels, batch_size), batch_size, steps))
    measure("(c) PIL Dataset + transforms + DataLoader(2 workers)", _conventional(images, labels, batch_size, steps))
    measure("(d) fer_lib step alone (channels-last fp32), random tensors",
            _timed(_plain_step(batch_size, channels_last=True), batch_size, steps))
    print("variants measured to choose (d):")
    measure("    bfloat16 autocast + channels-last",
            _timed(_plain_step(batch_size, True, bf16=True), batch_size, max(2, steps // 4), warmup=1))
    measure("    channels-last, batch 256", _timed(_plain_step(256, True), 256, max(2, steps // 2)))
    from fer_lib.core.io import cpu_model
    from fer_lib.training.runs import config_for, resolve_precision

    size = config_for("full").input_size
    results["cpu"] = cpu_model()
    results["precision_auto"] = resolve_precision("auto", torch.device("cpu"))
    print(f"precision, the full recipe's step at {size}x{size} (this CPU: {results['cpu']}; "
          f"--precision auto picks {results['precision_auto']}):")
    for precision in ("fp32", "bf16"):
        measure(f"    full recipe, {precision}", _timed(_recipe_step(images, labels, batch_size, "full", precision),
                                                       batch_size, max(2, steps // 2), warmup=1))
    results["b_over_c"] = (ips["(b) fer_lib training loop incl. augmentation"]
                           / ips["(c) PIL Dataset + transforms + DataLoader(2 workers)"])
    results["b_over_d"] = (ips["(b) fer_lib training loop incl. augmentation"]
                           / ips["(d) fer_lib step alone (channels-last fp32), random tensors"])
    print(f"b/c = {results['b_over_c']:.2f} (target >= 1.5)   b/d = {results['b_over_d']:.2f} (target >= 0.9)")
    results["load"] = _load_times(data)
    if results["load"]:
        load = results["load"]
        print(f"load {load['file']}: fer_lib {load['fer_lib_seconds']:.2f} s, "
              f"from cache {load['fer_lib_cached_seconds']:.2f} s, "
              f"pandas + per-row split {load['pandas_split_seconds']:.2f} s")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
    return results
