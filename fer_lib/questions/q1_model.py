"""Q1: the network's layers, their shapes at the run's input size and the residual wiring, from one torchinfo pass."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import nn

Shape = tuple[int, ...]  # (C, H, W) of one face, or (features,) after the pooling


def module_lines(model: nn.Module) -> list[str]:
    """The repr of every leaf module in registration order: the flat list the seed report printed."""
    return [repr(m) for m in model.modules() if not list(m.children())]


def layer_shapes(model: nn.Module, input_size: int = 48) -> pd.DataFrame:
    """One row per module call for one face of ``input_size`` x ``input_size``, in the order the data flows.

    Columns: ``layer`` (dotted path, e.g. layer2.0.downsample.0), ``type``, ``depth`` (1 = a child of the model),
    ``leaf``, ``input`` and ``output`` shapes without the batch axis, ``kernel``, ``stride`` and ``padding`` (sides;
    0 where the module has none), ``parameters`` (a container counts its children's) and ``mult_adds`` (leaf
    modules only, so the column sums to the model's total). A module called twice (each block's ReLU) has two rows.
    The model is left on its device and in its mode.
    """
    from torchinfo import summary

    device = next(model.parameters()).device  # torchinfo would otherwise move a CPU model to a GPU
    stats = summary(model, input_size=(1, 3, input_size, input_size), depth=8, verbose=0, device=device)
    rows = []
    for info in stats.summary_list[1:]:  # [0] is the model itself
        parts, node = [info.var_name], info.parent_info  # layer1.0.conv1 rather than torchinfo's bare "conv1"
        while node is not None and node.depth > 0:
            parts.append(node.var_name)
            node = node.parent_info
        rows.append({"layer": ".".join(reversed(parts)), "type": info.class_name, "depth": info.depth,
                     "leaf": info.is_leaf_layer, "input": tuple(info.input_size[1:]),
                     "output": tuple(info.output_size[1:]),
                     **{key: _side(getattr(info.module, f"{key}_size" if key == "kernel" else key, 0))
                        for key in ("kernel", "stride", "padding")},
                     "parameters": info.num_params, "mult_adds": info.macs if info.is_leaf_layer else 0})
    return pd.DataFrame(rows)


def _side(value) -> int:
    """A square kernel's, stride's or padding's side (modules here are square); 0 for none."""
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f"expected a square setting, got {value}")
        value = value[0]
    return int(value) if isinstance(value, int) else 0


@dataclass(frozen=True)
class Block:
    """One residual block: relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x))."""
    name: str  # e.g. "layer2.0"
    input: Shape  # (C, H, W)
    output: Shape
    stride: int  # of its first 3x3 convolution
    downsample: bool  # the skip is a 1x1 convolution (stride ``stride``) + BatchNorm, not the identity


@dataclass(frozen=True)
class Architecture:
    """What Q1 reports about the network at one input size (numbers from :func:`layer_shapes`)."""
    input_size: int
    parameters: int
    mult_adds: int  # per face
    leaf_modules: int  # the length of the seed's printed module list
    stem_conv: Shape  # after the 7x7 stride-2 convolution
    stem: Shape  # after the max-pool, entering layer1
    blocks: tuple[Block, ...]
    pooled: Shape  # after the global average pool, flattened
    dropout: float
    classes: int

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(b.name.split(".")[0] for b in self.blocks))

    @property
    def downsampled(self) -> list[str]:
        """The blocks whose skip connection carries a 1x1 convolution."""
        return [b.name for b in self.blocks if b.downsample]

    def stage_output(self, stage: str) -> Shape:
        """(C, H, W) leaving ``stage`` ("stem", "layer1" ... "layer4")."""
        if stage == "stem":
            return self.stem
        return [b.output for b in self.blocks if b.name.split(".")[0] == stage][-1]


def architecture(model: nn.Module, input_size: int = 48, shapes: pd.DataFrame | None = None) -> Architecture:
    """The torchvision ResNet ``model`` summarised at ``input_size`` (``shapes``: its :func:`layer_shapes`)."""
    shapes = layer_shapes(model, input_size) if shapes is None else shapes
    by_name = shapes.drop_duplicates("layer").set_index("layer")
    blocks = tuple(
        Block(name=row.layer, input=row.input, output=row.output,
              stride=int(by_name.loc[f"{row.layer}.conv1", "stride"]),
              downsample=f"{row.layer}.downsample" in by_name.index)
        for row in shapes[shapes["type"] == "BasicBlock"].itertuples())
    dropout, linear = model.fc if isinstance(model.fc, nn.Sequential) else (None, model.fc)
    return Architecture(input_size=input_size, parameters=int(shapes.loc[shapes["leaf"], "parameters"].sum()),
                        mult_adds=int(shapes["mult_adds"].sum()), leaf_modules=len(module_lines(model)),
                        stem_conv=by_name.loc["conv1", "output"], stem=by_name.loc["maxpool", "output"],
                        blocks=blocks, pooled=(linear.in_features,),
                        dropout=dropout.p if dropout is not None else 0.0, classes=linear.out_features)


def stage_map_sides(model: nn.Module, input_size: int = 48) -> dict[str, int]:
    """The side of the feature map after the stem and after each stage, e.g. {"stem": 12, ..., "layer4": 2}."""
    arch = architecture(model, input_size)
    return {stage: arch.stage_output(stage)[-1] for stage in ["stem", *arch.stages]}


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


def _shape_table(shapes: pd.DataFrame) -> pd.DataFrame:
    shape = "x".join
    return shapes.assign(input=[shape(map(str, s)) for s in shapes["input"]],
                         output=[shape(map(str, s)) for s in shapes["output"]],
                         kernel=[f"{k}x{k}" if k else "" for k in shapes["kernel"]],
                         stride=[s or "" for s in shapes["stride"]])


def model_answer(model: nn.Module, input_size: int, run_dir: str | Path) -> ModelAnswer:
    """Q1's one call: ``model`` (weights do not matter) traced at ``input_size``; ``run_dir`` holds run.json."""
    shapes = layer_shapes(model, input_size)
    arch = architecture(model, input_size, shapes)
    top = _shape_table(shapes[shapes["depth"] == 1])
    first_stride = {b.name.split(".")[0]: b.stride for b in reversed(arch.blocks)}
    top["stride"] = [first_stride.get(name, s) for name, s in zip(top["layer"], top["stride"])]
    every = _shape_table(shapes)
    every["layer"] = ["\u2003" * (d - 1) + name for d, name in zip(every["depth"], every["layer"])]
    every["parameters"] = [f"{p:,}" if leaf else "" for p, leaf in zip(every["parameters"], every["leaf"])]
    every["padding"] = [p if t in ("Conv2d", "MaxPool2d") else "" for p, t in zip(every["padding"], every["type"])]
    blocks = pd.DataFrame([{"block": b.name, "input": "x".join(map(str, b.input)),
                            "output": "x".join(map(str, b.output)), "stride": b.stride,
                            "skip": f"1x1 conv, stride {b.stride}, + BatchNorm" if b.downsample else "identity"}
                           for b in arch.blocks])
    stages = ["stem", *arch.stages]
    sides = {s: architecture(model, s) if s != input_size else arch for s in sorted({48, input_size})}
    map_sides = pd.DataFrame({"stage": stages, **{f"map side at {s}x{s}": [a.stage_output(g)[-1] for g in stages]
                                                  for s, a in sides.items()}})
    run = json.loads((Path(run_dir) / "run.json").read_text())
    return ModelAnswer(arch, top[["layer", "type", "input", "output", "kernel", "stride", "parameters"]],
                       every[["layer", "type", "input", "output", "kernel", "stride", "padding", "parameters"]],
                       blocks, map_sides, module_lines(model), run.get("weights_origin", ""), run.get("device", ""))
