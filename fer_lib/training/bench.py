"""`make bench`: images/s of training pipelines with one model and batch size, and CSV load times.

(a) plain eager float32 step on random tensors (NCHW)              - the hardware baseline
(b) this project's training loop: uint8 faces -> batched augmentation -> its step
(c) the conventional pipeline: PIL Dataset + per-image torchvision transforms + DataLoader(2 workers)
(d) this project's step alone on random tensors
plus the variants measured to choose (d) (channels-last, bfloat16 autocast, batch 256) and the full recipe's
step in float32 and bfloat16.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fer_lib.core.io import cpu_model
from fer_lib.model.network import build_model
from fer_lib.training.runs import TrainConfig, config_for, default_threads, resolve_precision
from fer_lib.training.train import make_optimizer, train_step


def _timed(step, batch_size: int, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - start)


def _plain_step(batch_size: int, channels_last: bool = False, bf16: bool = False):
    model = build_model("random")[0].train()
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch_size, 3, 48, 48).contiguous(memory_format=memory), torch.randint(0, 7, (batch_size,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _project_step(images: np.ndarray, labels: np.ndarray, config: TrainConfig, precision: str = "fp32",
                  random_batches: bool = True):
    """This project's step (augmentation included) on batches drawn from ``images`` (or always the first one)."""
    model = build_model("random")[0].train().to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, config, len(images) // config.batch_size)
    faces, targets = torch.from_numpy(images), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(0)

    def step():
        idx = (torch.randint(0, len(faces), (config.batch_size,), generator=gen) if random_batches
               else torch.arange(config.batch_size))
        train_step(model, opt, sched, faces[idx], targets[idx], config, None, gen, torch.device("cpu"), precision)

    return step


class _PILFaces(torch.utils.data.Dataset):
    """What a student would write: one PIL image per item, transformed one at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision import transforms as T

        self.images, self.labels = images, labels
        self.transform = T.Compose([T.Grayscale(3), T.RandomHorizontalFlip(),
                                    T.RandomAffine(10, (0.1, 0.1), (0.9, 1.1)), T.ToTensor(),
                                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                    T.RandomErasing(p=0.25)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _conventional(images: np.ndarray, labels: np.ndarray, batch_size: int, steps: int) -> float:
    model = build_model("random")[0].train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(_PILFaces(images, labels), batch_size=batch_size, shuffle=True,
                                         num_workers=2, drop_last=True)
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
    import pandas as pd

    from fer_lib.data.layouts import first_existing, read_homework_csv

    path = data and (first_existing(Path(data), "train.csv.gz", "train.csv") if Path(data).is_dir() else Path(data))
    if not path:
        return {}
    seconds = {}
    with tempfile.TemporaryDirectory() as cache:
        for name, read in (("fer_lib_seconds", lambda: read_homework_csv(path, cache_dir=None)),
                           ("fer_lib_cached_seconds", lambda: read_homework_csv(path, cache_dir=Path(cache))),
                           ("pandas_split_seconds", lambda: np.stack([np.array(s.split(), dtype=np.uint8)
                                                                      for s in pd.read_csv(path)["feature"]]))):
            if name == "fer_lib_cached_seconds":
                read()  # fills the cache
            t = time.perf_counter()
            read()
            seconds[name] = time.perf_counter() - t
    return {"file": str(path), **seconds}


def run_bench(data: str | None = None, batch_size: int = 128, steps: int = 8,
              out: str | None = "runs/bench.json") -> dict:
    torch.set_num_threads(default_threads())
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (2048, 48, 48), dtype=np.uint8), rng.integers(0, 7, 2048)
    ips: dict[str, float] = {}
    results = {"threads": torch.get_num_threads(), "batch_size": batch_size, "steps": steps, "images_per_second": ips,
               "cpu": cpu_model(), "precision_auto": resolve_precision("auto", torch.device("cpu"))}

    def measure(name: str, value) -> None:
        ips[name] = round(value, 1)
        print(f"  {name:58s} {value:7.1f} img/s", flush=True)

    b, c, d = ("(b) fer_lib training loop incl. augmentation", "(c) PIL Dataset + transforms + DataLoader(2 workers)",
               "(d) fer_lib step alone (channels-last fp32), random tensors")
    print(f"training throughput, batch {batch_size}, {torch.get_num_threads()} threads:")
    measure("(a) plain eager fp32 step, random tensors", _timed(_plain_step(batch_size), batch_size, steps))
    measure(b, _timed(_project_step(images, labels, TrainConfig(batch_size=batch_size, weights="random")),
                      batch_size, steps))
    measure(c, _conventional(images, labels, batch_size, steps))
    measure(d, _timed(_plain_step(batch_size, channels_last=True), batch_size, steps))
    print("variants measured to choose (d):")
    measure("    bfloat16 autocast + channels-last",
            _timed(_plain_step(batch_size, True, bf16=True), batch_size, max(2, steps // 4), warmup=1))
    measure("    channels-last, batch 256", _timed(_plain_step(256, True), 256, max(2, steps // 2)))
    full = config_for("full", batch_size=batch_size, weights="random")
    print(f"precision, the full recipe's step at {full.input_size}x{full.input_size} (this CPU: {results['cpu']}; "
          f"--precision auto picks {results['precision_auto']}):")
    for precision in ("fp32", "bf16"):
        measure(f"    full recipe, {precision}", _timed(_project_step(images, labels, full, precision, False),
                                                       batch_size, max(2, steps // 2), warmup=1))
    results["b_over_c"], results["b_over_d"] = ips[b] / ips[c], ips[b] / ips[d]
    print(f"b/c = {results['b_over_c']:.2f} (target >= 1.5)   b/d = {results['b_over_d']:.2f} (target >= 0.9)")
    results["load"] = load = _load_times(data)
    if load:
        print(f"load {load['file']}: fer_lib {load['fer_lib_seconds']:.2f} s, from cache "
              f"{load['fer_lib_cached_seconds']:.2f} s, pandas + per-row split {load['pandas_split_seconds']:.2f} s")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
    return results
