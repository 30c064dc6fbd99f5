"""Q1's figures: feature-map sides per stage."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import (
    NullLocator,
    ScalarFormatter,
)

# The report's pages show figures at most this wide (CSS pixels; report.py's page style caps the content at
# 960 px, less padding). A figure wider than this is scaled down to it, and its text with it.

def plot_stage_maps(sides_by_input: dict[int, dict[str, int]]):
    """Feature-map side after the stem and each stage, one line per input size (Q1's key figure)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for size, sides in sides_by_input.items():
        stages = list(sides)
        ax.plot(stages, [sides[s] for s in stages], marker="o", label=f"input {size}x{size}")
        for stage in stages:
            ax.annotate(f"{sides[stage]}x{sides[stage]}", (stage, sides[stage]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=10)
    ax.set_yscale("log", base=2)
    ax.set_yticks(sorted({v for sides in sides_by_input.values() for v in sides.values()}))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylabel("feature-map side (pixels)")
    ax.set_title("ResNet18: spatial size of the feature maps per stage")
    ax.legend()
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ Q4

