"""Inference: the device follows the model; test-time views."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from fer_lib.model.inference import predict_logits
from fer_lib.model.network import build_model

# --------------------------------------------------------------------------------------------- device


class DeviceSpy(torch.nn.Module):
    """A stand-in model whose parameter lives on ``device`` and which records where its inputs arrive (the
    "meta" device has no data, so this runs on any machine and still tells the devices apart)."""

    def __init__(self, device):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device=device))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.device.type)
        return torch.zeros(len(x), 7)


def test_predict_logits_takes_the_device_from_the_model():
    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    spy = DeviceSpy("meta")
    assert predict_logits(spy, faces).shape == (5, 7)
    assert spy.seen == ["meta"], "the batch goes where the model's parameters are"
    spy.seen.clear()
    predict_logits(spy, faces, device="cpu")
    assert spy.seen == ["cpu"], "an explicit device wins"
    if torch.cuda.is_available():
        torch.manual_seed(0)
        model, _ = build_model("random")
        torch.testing.assert_close(predict_logits(model.cuda(), faces), predict_logits(model.cpu(), faces),
                                   atol=1e-3, rtol=1e-3)


def test_test_time_views_are_the_face_its_mirror_and_small_shifts():
    from fer_lib.model.inference import tta_views

    x = torch.arange(2 * 3 * 72 * 72, dtype=torch.float32).reshape(2, 3, 72, 72)
    assert len(tta_views(x, "none")) == 1 and len(tta_views(x, "flip")) == 2
    views = tta_views(x, "flip+shift")
    assert len(views) == 6 and all(v.shape == x.shape for v in views)
    torch.testing.assert_close(views[1], x.flip(3))
    # 2 pixels of 48 are 3 of 72: the face moved down by 3, its top row repeated where the shift uncovers it
    torch.testing.assert_close(views[2][..., 3:, :], x[..., :-3, :])
    torch.testing.assert_close(views[2][..., :3, :], x[..., :1, :].expand(-1, -1, 3, -1))
    torch.testing.assert_close(views[5][..., :, :-3], x[..., :, 3:])
    with pytest.raises(ValueError, match="tta must be one of"):
        tta_views(x, "crop")


