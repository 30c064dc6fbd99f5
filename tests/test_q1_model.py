"""Q1: the model is the seed's module list; one torchinfo pass gives every layer's shapes and the residual wiring;
the block diagram draws it legibly."""
from __future__ import annotations

import copy
import io
import re
from pathlib import Path

import pytest
from matplotlib.colors import to_rgb
from matplotlib.patches import Circle
from PIL import Image
from torch import nn

from fer_lib.model.network import build_model
from fer_lib.plots.q1_model import SKIP, plot_architecture
from fer_lib.plots.show import MIN_TEXT_PX, figure_png, smallest_text_px
from fer_lib.questions.q1_model import architecture, layer_shapes, model_answer, module_lines, stage_map_sides

SEED_COPY = Path(__file__).parent / "data" / "report_seed.md"
SEED_SHARED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "report_seed.md"
MODULE_START = re.compile(r"(Conv2d|BatchNorm2d|ReLU|MaxPool2d|AdaptiveAvgPool2d|Dropout|Linear)\(")


def seed_module_lines(text: str) -> list[str]:
    """The seed's module list, with its OCR slips mended (escaped underscores, 'kernel size', two per line)."""
    text = text.replace("\\_", "_")
    text = re.sub(r"kernel size", "kernel_size", text)
    text = re.sub(r"track running stats", "track_running_stats", text)
    # some lines hold two modules ("BatchNorm2d(...) ReLU(inplace=True)"): cut at every module name
    starts = [m.start() for m in MODULE_START.finditer(text)]
    lines = []
    for a, b in zip(starts, starts[1:] + [len(text)]):
        chunk = text[a:b]
        depth = 0
        for i, ch in enumerate(chunk):  # keep up to the matching closing parenthesis
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and ch == ")":
                lines.append(chunk[:i + 1].strip())
                break
    return lines


def test_seed_copy_matches_shared_seed():
    if not SEED_SHARED.exists():
        pytest.skip("../shared/seed is not beside this checkout")
    assert SEED_COPY.read_text() == SEED_SHARED.read_text()


def test_model_modules_equal_the_seed_list_in_order():
    expected = seed_module_lines(SEED_COPY.read_text())
    model, _ = build_model("random")
    # torch 2.14's repr also prints two defaults the seed's older torch did not: BatchNorm2d(bias=True)
    # and Dropout(inplace=False); the seed's values for every other argument must match exactly
    actual = [line.replace(", bias=True, track", ", track").replace("Dropout(p=0.5, inplace=False)", "Dropout(p=0.5)")
              for line in module_lines(model)]
    # stem 4 + layer1 2x5 + layers 2-4 3x(2x5 + 2 downsample) + pool, dropout, linear; each BasicBlock
    # owns one ReLU module that it calls twice, so it is listed once
    assert len(expected) == 53, "the seed's module list should parse into 53 modules"
    assert actual == expected


@pytest.fixture(scope="module")
def model():
    return build_model("random")[0]


def test_layer_shapes_trace_one_face_through_every_layer(model):
    shapes = layer_shapes(model, 72)
    by_layer = shapes.drop_duplicates("layer").set_index("layer")
    conv1 = by_layer.loc["conv1"]
    assert (conv1["input"], conv1["output"], conv1["kernel"], conv1["stride"], conv1["padding"],
            conv1["parameters"]) == ((3, 72, 72), (64, 36, 36), 7, 2, 3, 3 * 64 * 7 * 7)
    assert by_layer.loc["maxpool", "output"] == (64, 18, 18)
    down = by_layer.loc["layer2.0.downsample.0"]
    assert (down["input"], down["output"], down["kernel"], down["stride"]) == ((64, 18, 18), (128, 9, 9), 1, 2)
    assert by_layer.loc["fc", "output"] == (7,) and by_layer.loc["layer4", "output"] == (512, 3, 3)
    assert (shapes["layer"] == "layer1.0.relu").sum() == 2  # one ReLU module, called twice per block
    assert shapes.loc[shapes["leaf"], "parameters"].sum() == sum(p.numel() for p in model.parameters())
    # a convolution's multiply-adds: output positions x kernel area x input channels x output channels
    assert by_layer.loc["conv1", "mult_adds"] == 36 * 36 * 7 * 7 * 3 * 64
    assert model.training and next(model.parameters()).device.type == "cpu"  # mode and device left as they were


@pytest.mark.parametrize("size, sides", [(48, [12, 12, 6, 3, 2]), (72, [18, 18, 9, 5, 3]), (96, [24, 24, 12, 6, 3])])
def test_stage_sides_follow_the_input_size(model, size, sides):
    assert stage_map_sides(model, size) == dict(zip(["stem", "layer1", "layer2", "layer3", "layer4"], sides))


def test_architecture_makes_the_skips_explicit(model):
    arch = architecture(model, 72)
    assert [b.name for b in arch.blocks] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert [b.name for b in arch.blocks if b.downsample] == ["layer2.0", "layer3.0", "layer4.0"]
    assert [b.stride for b in arch.blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert list(arch.outputs) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert [shape[0] for shape in arch.outputs.values()] == [64, 64, 128, 256, 512]
    assert (arch.outputs["stem"], arch.pooled) == ((64, 18, 18), 512)
    assert (arch.parameters, arch.dropout, arch.classes) == (11_180_103, 0.5, 7)
    assert (arch.blocks[2].input, arch.blocks[2].output) == ((64, 18, 18), (128, 9, 9))


def test_architecture_reads_the_model_not_a_template(model):
    changed = copy.deepcopy(model)
    changed.layer2[0].conv1.stride = (1, 1)  # layer2 keeps its side: 12x12 at 48, then 6 and 3
    changed.layer2[0].downsample[0].stride = (1, 1)
    changed.layer1[0].downsample = nn.Sequential(nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64))
    arch = architecture(changed, 48)
    assert [b.stride for b in arch.blocks] == [1, 1, 1, 1, 2, 1, 2, 1]
    assert [shape[-1] for shape in arch.outputs.values()] == [12, 12, 12, 6, 3]
    assert [b.name for b in arch.blocks if b.downsample] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]


def test_block_diagram_is_legible(model):
    fig = plot_architecture(architecture(model, 72))
    width = Image.open(io.BytesIO(figure_png(fig))).size[0]
    assert smallest_text_px(fig, width)[0] >= MIN_TEXT_PX
    sums = [p for p in fig.axes[0].patches if isinstance(p, Circle)]
    assert len(sums) == 8  # one (+) per residual block
    assert sum(tuple(p.get_edgecolor()[:3]) == pytest.approx(to_rgb(SKIP)) for p in sums) == 3  # fed by a 1x1 conv


def test_model_answer_holds_the_page_tables(model, tmp_path):
    (tmp_path / "run.json").write_text('{"weights_origin": "random initialisation", "device": "cpu"}')
    q1 = model_answer(model, 72, tmp_path)
    assert q1.arch == architecture(model, 72) and q1.modules == module_lines(model)
    assert (q1.weights_origin, q1.trained_on) == ("random initialisation", "cpu")
    top = q1.top.set_index("layer")
    assert list(top.index) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                               "avgpool", "fc"]
    # a stage's stride is its first block's; shapes read channels x height x width
    assert [top.loc[f"layer{i}", "stride"] for i in range(1, 5)] == [1, 2, 2, 2]
    assert (top.loc["conv1", "input"], top.loc["conv1", "output"], top.loc["conv1", "kernel"]) == \
        ("3x72x72", "64x36x36", "7x7")
    assert len(q1.layers) == len(layer_shapes(model, 72)) and q1.layers["layer"].iloc[5].startswith("\u2003")
    assert list(q1.blocks["skip"]).count("identity") == 5
    assert q1.map_sides.to_dict("list") == {"stage": ["stem", "layer1", "layer2", "layer3", "layer4"],
                                            "map side at 48x48": [12, 12, 6, 3, 2],
                                            "map side at 72x72": [18, 18, 9, 5, 3]}
