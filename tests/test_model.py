"""The model is the seed's module list; ImageNet weights load from the cache or fall back loudly."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fer_lib.model.network import (
    IMAGENET_FILE,
    WeightsWarning,
    build_model,
    imagenet_weights_path,
    module_lines,
    preprocess,
    residual_structure,
)

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


def test_head_is_dropout_then_linear_to_seven():
    model, _ = build_model("random")
    assert isinstance(model.fc[0], torch.nn.Dropout) and model.fc[0].p == 0.5
    assert (model.fc[1].in_features, model.fc[1].out_features) == (512, 7)
    assert model(torch.zeros(2, 3, 48, 48)).shape == (2, 7)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_imagenet_weights_are_used_from_the_torch_cache(torch_home):
    from torchvision.models import resnet18

    torch.manual_seed(123)
    fake = resnet18(weights=None).state_dict()  # stands in for the ImageNet file: same keys and shapes
    path = imagenet_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(fake, path)
    model, origin = build_model("imagenet")
    assert origin.startswith("ImageNet weights from") and IMAGENET_FILE in origin
    torch.testing.assert_close(model.conv1.weight, fake["conv1.weight"])
    torch.testing.assert_close(model.layer4[1].bn2.running_var, fake["layer4.1.bn2.running_var"])
    assert model.fc[1].weight.shape == (7, 512)  # the head is new, not ImageNet's 1000-way layer


def test_missing_weights_warn_and_fall_back_to_random(torch_home):
    with pytest.warns(WeightsWarning, match="ImageNet weights not found"):
        model, origin = build_model("imagenet")
    assert origin.startswith("random initialisation (ImageNet weights not found")


def test_a_file_that_is_not_resnet18_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a ResNet18 state dict"):
        build_model(path)


@pytest.mark.parametrize("size", [48, 64])
def test_preprocess_shapes_and_normalisation(size):
    faces = torch.full((4, 48, 48), 255, dtype=torch.uint8)
    x = preprocess(faces, size)
    assert x.shape == (4, 3, size, size)
    # white maps to (1 - mean) / std per channel
    torch.testing.assert_close(x[0, :, 0, 0],
                               (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def test_residual_structure_makes_skips_explicit():
    model, _ = build_model("random")
    rows = residual_structure(model, 48)
    assert [r["block"] for r in rows] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    downsampling = [r["block"] for r in rows if r["skip connection"].startswith("downsample")]
    assert downsampling == ["layer2.0", "layer3.0", "layer4.0"]
    assert rows[-1]["output (C, H, W)"] == (512, 2, 2)
    assert model.training  # the shape probe restored the mode
