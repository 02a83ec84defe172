"""FullGrad: parity with pytorch-grad-cam, the model left untouched, its layers and errors."""

from __future__ import annotations

import logging

import pytest
from torch import nn

import pytorch_cam as pc
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

CLASSES = [3, 7]
TARGETS = [ClassifierOutputTarget(c) for c in CLASSES]


def test_fullgrad_parity_with_grad_cam(private_resnet18, x64, pearson):
    import pytorch_grad_cam as pg
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as GT

    resnet = private_resnet18
    resnet.zero_grad(set_to_none=True)  # grad-cam's backward() fills .grad; ours must not
    ours = pc.FullGrad(resnet, [])(x64, TARGETS)
    assert all(p.grad is None for p in resnet.parameters())
    assert all(not m._forward_hooks for m in resnet.modules())
    theirs = pg.FullGrad(resnet, [])(x64, [GT(c) for c in CLASSES])
    resnet.zero_grad(set_to_none=True)
    assert (pearson(ours, theirs) >= 0.99).all()


def test_fullgrad_errors_and_layers(private_resnet18, caplog):
    resnet = private_resnet18
    with caplog.at_level(logging.WARNING, logger="pytorch_cam"):
        cam = pc.FullGrad(resnet, [resnet.layer4[-1]])
    assert "ignores target_layers" in caplog.text
    assert len(cam.target_layers) == sum(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    with pytest.raises(ValueError, match="no Conv2d/Conv3d/BatchNorm2d/BatchNorm3d layer with a bias"):
        pc.FullGrad(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Flatten()), [])
