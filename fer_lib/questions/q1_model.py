"""Q1: the network's layers, their shapes at the run's input size and the residual wiring, from one torchinfo pass."""
from __future__ import annotations

import json
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn
from torchinfo import summary

Shape = tuple[int, ...]  # (C, H, W) of one face
Block = namedtuple("Block", "name input output stride downsample")  # one residual block, see Architecture.blocks


def module_lines(model: nn.Module) -> list[str]:
    """The repr of every leaf module in registration order: the flat list the seed report printed."""
    return [repr(m) for m in model.modules() if not list(m.children())]


def layer_shapes(model: nn.Module, input_size: int = 48) -> pd.DataFrame:
    """A row per module call for one face, in the order the data flows (a block's ReLU, called twice, has two): its
    dotted path, type, depth, shapes, kernel/stride/padding sides (0: none), parameters, mult_adds (leaves only)."""
    # on the model's own device: torchinfo would otherwise move a CPU model to a GPU
    stats = summary(model, input_size=(1, 3, input_size, input_size), depth=8, verbose=0,
                    device=next(model.parameters()).device)
    rows = []
    for info in stats.summary_list[1:]:  # [0] is the model itself
        parts, node = [info.var_name], info.parent_info  # layer1.0.conv1 rather than torchinfo's bare "conv1"
        while node is not None and node.depth > 0:
            parts, node = [node.var_name, *parts], node.parent_info
        rows.append({"layer": ".".join(parts), "type": info.class_name, "depth": info.depth,
                     "leaf": info.is_leaf_layer, "input": tuple(info.input_size[1:]),
                     "output": tuple(info.output_size[1:]),  # kernel, stride, padding: all square here, one side
                     **{key: int(np.ravel(getattr(info.module, attr, 0))[0]) for key, attr in
                        (("kernel", "kernel_size"), ("stride", "stride"), ("padding", "padding"))},
                     "parameters": info.num_params, "mult_adds": info.macs if info.is_leaf_layer else 0})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Architecture:
    """What Q1 reports about the network at one input size (numbers from :func:`layer_shapes`)."""
    input_size: int
    parameters: int
    mult_adds: int  # per face
    outputs: dict[str, Shape]  # leaving the stem (after the max-pool) and each stage, "layer1" ... "layer4"
    # the residual blocks, relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x)): name ("layer2.0"), input, output, stride
    # (of conv1), downsample (the skip is a 1x1 convolution of that stride + BatchNorm, not the identity)
    blocks: tuple[Block, ...]
    pooled: int  # features after the global average pool
    dropout: float
    classes: int


def architecture(model: nn.Module, input_size: int = 48, shapes: pd.DataFrame | None = None) -> Architecture:
    """The torchvision ResNet ``model`` summarised at ``input_size`` (``shapes``: its :func:`layer_shapes`)."""
    shapes = layer_shapes(model, input_size) if shapes is None else shapes
    by_name = shapes.drop_duplicates("layer").set_index("layer")
    blocks = tuple(Block(n, by_name.loc[n, "input"], by_name.loc[n, "output"],
                         int(by_name.loc[f"{n}.conv1", "stride"]), f"{n}.downsample" in by_name.index)
                   for n in shapes.loc[shapes["type"] == "BasicBlock", "layer"])
    dropout, linear = model.fc
    return Architecture(input_size, int(shapes.loc[shapes["leaf"], "parameters"].sum()), int(shapes["mult_adds"].sum()),
                        {"stem": by_name.loc["maxpool", "output"]} | {b.name.split(".")[0]: b.output for b in blocks},
                        blocks, linear.in_features, dropout.p, linear.out_features)


def stage_map_sides(model: nn.Module, input_size: int = 48) -> dict[str, int]:
    """The side of the feature map after the stem and after each stage, e.g. {"stem": 12, ..., "layer4": 2}."""
    return {stage: shape[-1] for stage, shape in architecture(model, input_size).outputs.items()}


@dataclass(frozen=True)
class ModelAnswer:
    """Everything the Q1 page shows: the summary, its tables (shapes as "CxHxW") and how the run started."""
    arch: Architecture
    top: pd.DataFrame  # the model's children; a stage's stride is its first block's
    layers: pd.DataFrame  # every module call, indented by depth
    blocks: pd.DataFrame  # the residual blocks and their skips
    map_sides: pd.DataFrame  # the map side after the stem and each stage, at 48 and at the run's input size
    modules: list[str]  # the seed's flat module list
    weights_origin: str  # from the run's run.json
    trained_on: str  # the run's device


def model_answer(model: nn.Module, input_size: int, run_dir: str | Path) -> ModelAnswer:
    """Q1's one call: ``model`` (weights do not matter) traced at ``input_size``; ``run_dir`` holds run.json."""
    shapes = layer_shapes(model, input_size)
    arch = architecture(model, input_size, shapes)

    def text(shape: Shape) -> str:
        return "x".join(map(str, shape))

    table = shapes.assign(input=shapes["input"].map(text), output=shapes["output"].map(text),
                          kernel=[f"{k}x{k}" if k else "" for k in shapes["kernel"]],
                          stride=shapes["stride"].replace(0, ""))
    first_stride = {b.name.split(".")[0]: b.stride for b in reversed(arch.blocks)}
    top = table[table["depth"] == 1]
    top = top.assign(stride=[first_stride.get(name, s) for name, s in zip(top["layer"], top["stride"])])
    layers = table.assign(layer=["\u2003" * (d - 1) + name for d, name in zip(table["depth"], table["layer"])],
                          parameters=[f"{p:,}" if leaf else "" for p, leaf in zip(table["parameters"], table["leaf"])],
                          padding=[p if t in ("Conv2d", "MaxPool2d") else "" for p, t in zip(table["padding"],
                                                                                              table["type"])])
    blocks = pd.DataFrame([{"block": b.name, "input": text(b.input), "output": text(b.output), "stride": b.stride,
                            "skip": f"1x1 conv, stride {b.stride}, + BatchNorm" if b.downsample else "identity"}
                           for b in arch.blocks])
    at = {s: architecture(model, s) if s != input_size else arch for s in sorted({48, input_size})}
    map_sides = pd.DataFrame({"stage": list(arch.outputs),
                              **{f"map side at {s}x{s}": [o[-1] for o in a.outputs.values()] for s, a in at.items()}})
    run = json.loads((Path(run_dir) / "run.json").read_text())
    return ModelAnswer(arch, top[["layer", "type", "input", "output", "kernel", "stride", "parameters"]],
                       layers[["layer", "type", "input", "output", "kernel", "stride", "padding", "parameters"]],
                       blocks, map_sides, module_lines(model), run.get("weights_origin", ""), run.get("device", ""))
