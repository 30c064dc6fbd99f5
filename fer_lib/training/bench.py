"""`make bench`: images/s of the full recipe's training step (augmentation included) on this machine, and the
seconds to load the training CSV, parsed and then from the cache (the figures DESIGN.md's timings quote)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from fer_lib.core.io import cpu_model
from fer_lib.data.layouts import load_dataset
from fer_lib.model.network import build_model
from fer_lib.training.runs import config_for, default_threads, resolve_device, resolve_precision
from fer_lib.training.train import make_optimizer, train_step


def run_bench(data: str | None = None, batch_size: int = 128, steps: int = 8) -> None:
    torch.set_num_threads(default_threads())
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    config = config_for("full", batch_size=batch_size, weights="random")
    model = build_model("random")[0].train().to(device, memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, config, steps + 2)
    gen = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (batch_size, 48, 48), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 7, (batch_size,), generator=gen)
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            start = time.perf_counter()
        train_step(model, opt, sched, faces, labels, config, None, gen, device, precision)
    print(f"full recipe, batch {batch_size}, {precision} on {device} ({cpu_model()}, {torch.get_num_threads()} "
          f"threads): {batch_size * steps / (time.perf_counter() - start):.1f} images/s", flush=True)
    if data:
        with tempfile.TemporaryDirectory() as cache:
            seconds = []
            for _ in range(2):  # the first load parses and fills the cache
                t = time.perf_counter()
                load_dataset(data, cache_dir=Path(cache))
                seconds.append(time.perf_counter() - t)
        print(f"load {data}: {seconds[0]:.2f} s parsed, {seconds[1]:.2f} s from the cache")
