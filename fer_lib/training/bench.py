"""`make bench`: images/s of the full recipe's training step (augmentation included) on this machine, and the
seconds to load the training CSV, parsed and then from the cache (the figures DESIGN.md's timings quote)."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from fer_lib.core.io import cpu_model
from fer_lib.data.layouts import load_dataset
from fer_lib.model.network import build_model
from fer_lib.training.runs import config_for, default_threads, resolve_device, resolve_precision
from fer_lib.training.train import make_optimizer, train_step


def recipe_throughput(batch_size: int, steps: int, device: torch.device, precision: str) -> float:
    """Images/s of the full recipe's train_step on random uint8 faces, after two warm-up steps."""
    config = config_for("full", batch_size=batch_size, weights="random")
    model = build_model("random")[0].train().to(device, memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, config, steps + 2)
    gen = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (batch_size, 48, 48), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 7, (batch_size,), generator=gen)
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        train_step(model, opt, sched, faces, labels, config, None, gen, device, precision)
    return batch_size * steps / (time.perf_counter() - start)


def run_bench(data: str | None = None, batch_size: int = 128, steps: int = 8, device: str = "auto",
              out: str | None = "runs/bench.json") -> dict:
    torch.set_num_threads(default_threads())
    dev = resolve_device(device)
    precision = resolve_precision("auto", dev)
    ips = recipe_throughput(batch_size, steps, dev, precision)
    results = {"cpu": cpu_model(), "device": str(dev), "threads": torch.get_num_threads(), "precision": precision,
               "batch_size": batch_size, "images_per_second": round(ips, 1)}
    print(f"full recipe, batch {batch_size}, {precision} on {dev} ({results['cpu']}, {results['threads']} threads): "
          f"{ips:.1f} images/s", flush=True)
    if data:
        with tempfile.TemporaryDirectory() as cache:
            for key in ("load_seconds", "cached_load_seconds"):  # the first call parses and fills the cache
                t = time.perf_counter()
                load_dataset(data, cache_dir=Path(cache))
                results[key] = round(time.perf_counter() - t, 2)
        print(f"load {data}: {results['load_seconds']} s parsed, {results['cached_load_seconds']} s from the cache")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
    return results
