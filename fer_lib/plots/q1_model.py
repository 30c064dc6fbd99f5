"""Q1's figure: a block diagram of the network at the run's input size."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

from fer_lib import IMAGE_SIZE

FONT = 9  # points; 12 CSS px on the page at this figure's natural width (9 in)
SKIP = "#d95f02"  # a skip connection that carries a 1x1 convolution
IDENTITY = "#7f7f7f"
STAGE_FILL = "#e8eef7"


def _shape(shape) -> str:
    return f"\u2192 {shape[0]}\u00d7{shape[-1]}\u00d7{shape[-1]}"


def _arrow(ax, start, end):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color="#333333", lw=1.2,
                                 shrinkA=0, shrinkB=0))


def plot_architecture(arch):
    """Q1's Architecture as two rows of boxes with shapes: input, stem, the blocks grouped by stage (skips as arcs
    over each block, the 1x1 downsample ones highlighted), the pooling and the head."""
    w, h, pitch = 1.3, 1.0, 1.5  # box width and height, distance between box starts (inches)
    rows_y = (3.0, 0.55)  # bottom of the boxes in each row
    fig = plt.figure(figsize=(9, 5.1))
    ax = fig.add_axes((0, 0, 1, 1), xlim=(0, 9), ylim=(-0.3, 4.8), aspect="equal")  # one data unit is one inch
    ax.axis("off")
    size, by = arch.input_size, "\u00d7"
    elements = [("input", ["input", f"{IMAGE_SIZE}{by}{IMAGE_SIZE} gray face", "on 3 channels", _shape((3, size))]),
                ("stem", ["stem", f"7{by}7 conv /2", "BN, ReLU", f"3{by}3 max-pool /2", _shape(arch.outputs["stem"])])]
    elements += [(b, [b.name, f"3{by}3 conv" + (f" /{b.stride}" if b.stride > 1 else ""), f"3{by}3 conv",
                      _shape(b.output)]) for b in arch.blocks]
    elements += [("pool", ["avg pool", "global average", f"\u2192 {arch.pooled}"]),
                 ("head", ["head", f"Dropout({arch.dropout:g})", f"Linear({arch.pooled}, {arch.classes})",
                           f"\u2192 {arch.classes} logits"])]
    per_row = (len(elements) + 1) // 2
    places = [(0.1 + pitch * (i % per_row), rows_y[i // per_row]) for i in range(len(elements))]

    # the stages' backgrounds and labels, under the boxes
    for stage, out in list(arch.outputs.items())[1:]:
        xs = [place for (e, _), place in zip(elements, places)
              if not isinstance(e, str) and e.name.split(".")[0] == stage]
        (x0, y0), (x1, _) = xs[0], xs[-1]
        ax.add_patch(FancyBboxPatch((x0 - 0.06, y0 - 0.36), x1 - x0 + w + 0.12, h + 0.82,
                                    boxstyle="round,pad=0,rounding_size=0.08", fc=STAGE_FILL, ec="none", zorder=-1))
        ax.text((x0 + x1 + w) / 2, y0 - 0.2, f"{stage}: {out[0]} channels, {out[-1]}{by}{out[-1]}", ha="center",
                va="center", fontsize=FONT, color="#1f3b73")

    for i, ((element, lines), (x, y)) in enumerate(zip(elements, places)):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.06", ec="#333333", lw=1,
                                    fc="#fff7ec" if element == "head" else "white"))
        for k, line in enumerate(lines):
            ax.text(x + w / 2, y + h - h / (len(lines) + 1) * (k + 1), line, ha="center", va="center", fontsize=FONT,
                    fontweight="normal" if k else "bold")
        if i + 1 < len(elements):
            nx, ny = places[i + 1]
            if ny == y:
                _arrow(ax, (x + w, y + h / 2), (nx, ny + h / 2))
            else:  # from the end of the first row down to the start of the second
                turn = (rows_y[0] - 0.45 + rows_y[1] + h + 0.45) / 2
                ax.plot([x + w, x + w + 0.08, x + w + 0.08, nx - 0.08, nx - 0.08], [y + h / 2, y + h / 2, turn, turn,
                        ny + h / 2], color="#333333", lw=1.2)
                _arrow(ax, (nx - 0.08, ny + h / 2), (nx, ny + h / 2))
        if isinstance(element, str):
            continue
        # the skip connection: from the block's input over the box to the sum at its output
        color = SKIP if element.downsample else IDENTITY
        plus = (x + w - 0.02, y + h + 0.02)
        ax.add_patch(FancyArrowPatch((x + 0.02, y + h + 0.02), plus, connectionstyle="arc3,rad=-0.45",
                                     arrowstyle="-", color=color, lw=2 if element.downsample else 1.2,
                                     linestyle="-" if element.downsample else "--"))
        ax.add_patch(Circle(plus, 0.07, fc="white", ec=color, lw=1.2, zorder=3))
        ax.text(*plus, "+", ha="center", va="center", fontsize=FONT, color=color, zorder=4)
        if element.downsample:
            ax.text(x + w / 2, y + h + 0.42, f"1\u00d71 conv /{element.stride} + BN", ha="center", va="center",
                    fontsize=FONT, color=SKIP, fontweight="bold")

    ax.text(0.1, -0.15, "Each residual block: conv, BN, ReLU, conv, BN; its input comes back at (+), then ReLU.",
            fontsize=FONT, va="center")
    ax.plot([6.35, 6.7], [-0.15, -0.15], color=IDENTITY, lw=1.2, linestyle="--")
    ax.text(6.75, -0.15, "identity skip", fontsize=FONT, va="center")
    ax.plot([7.75, 8.1], [-0.15, -0.15], color=SKIP, lw=2)
    ax.text(8.15, -0.15, "1\u00d71 skip", fontsize=FONT, va="center", color=SKIP)
    return fig
