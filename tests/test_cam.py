"""CAM (Zhou et al. 2016): the class weights of a global-average-pool + linear head. Equal to
Grad-CAM there, parity with torchcam, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import pytorch_cam as pc
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

CLASSES = [3, 7]
TARGETS = [ClassifierOutputTarget(c) for c in CLASSES]


def test_cam_equals_gradcam_on_gap_linear_and_torchcam(private_resnet18, x64, pearson, base_pipeline):
    resnet = private_resnet18
    ours = pc.CAM(resnet, [resnet.layer4[-1]])(x64, TARGETS)
    grad_cam = pc.GradCAM(resnet, [resnet.layer4[-1]])(x64, TARGETS)
    np.testing.assert_allclose(ours, grad_cam, atol=1e-5)  # GAP + linear: dy/dA = W_k / (H W)
    from torchcam.methods import CAM as TorchcamCAM

    with TorchcamCAM(resnet, resnet.layer4[-1], resnet.fc, input_shape=(3, 64, 64)) as extractor:
        with torch.no_grad():
            resnet(x64)
        raw = extractor(class_idx=CLASSES, normalized=False)[0]
    assert (pearson(ours, base_pipeline(raw, (64, 64))) >= 0.99).all()


def test_cam_errors(private_resnet18, x64):
    resnet = private_resnet18
    with pytest.raises(ValueError, match=r"no nn.Linear with in_features == 256"):
        pc.CAM(resnet, [resnet.layer3[-1]])(x64, TARGETS)
    with pytest.raises(TypeError, match="each target needs a class index"):
        pc.CAM(resnet, [resnet.layer4[-1]])(x64, [lambda out: out[0]] * 2)
    with pytest.raises(ValueError, match="fc_layer is not a submodule"):
        pc.CAM(resnet, [resnet.layer4[-1]], fc_layer=nn.Linear(512, 3))
    with pytest.raises(ValueError, match="fc_layer takes 512 features but the target layer has 256"):
        pc.CAM(resnet, [resnet.layer3[-1]], fc_layer=resnet.fc)(x64, TARGETS)
