"""The model is built with the seed's head; ImageNet weights load from the cache or fall back loudly; faces are
preprocessed to the input size."""
from __future__ import annotations

import pytest
import torch

from fer_lib.model.network import (
    IMAGENET_FILE,
    WeightsWarning,
    build_model,
    imagenet_weights_path,
    preprocess,
)


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
