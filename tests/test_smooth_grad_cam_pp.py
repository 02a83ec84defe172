"""Smooth Grad-CAM++: parity with torchcam, and without noise equal to Grad-CAM++."""

from __future__ import annotations

import numpy as np
import torch

import pytorch_cam as pc
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

CLASSES = [3, 7]
TARGETS = [ClassifierOutputTarget(c) for c in CLASSES]


def test_smoothgradcampp_matches_torchcam_at_the_pooled_layer(private_resnet18, x64, pearson, base_pipeline):
    from torchcam.methods import SmoothGradCAMpp as TorchcamSmooth

    resnet = private_resnet18
    ours = pc.SmoothGradCAMpp(resnet, [resnet.layer4[-1]], num_samples=4, std=0.3, seed=0)(x64, TARGETS)
    torch.manual_seed(0)  # torchcam draws from the global generator, in the same order as ours
    with TorchcamSmooth(resnet, resnet.layer4[-1], num_samples=4, std=0.3, input_shape=(3, 64, 64)) as extractor:
        resnet(x64)
        raw = extractor(class_idx=CLASSES, normalized=False)[0]
    assert (pearson(ours, base_pipeline(raw, (64, 64))) >= 0.99).all()


def test_smoothgradcampp_zero_noise_is_gradcampp_and_seeded(private_resnet18, x64):
    resnet = private_resnet18
    layer = resnet.layer3[-1]
    smooth = pc.SmoothGradCAMpp(resnet, [layer], num_samples=1, std=0.0)(x64, TARGETS)
    np.testing.assert_allclose(smooth, pc.GradCAMPlusPlus(resnet, [layer])(x64, TARGETS), atol=1e-4)
    a = pc.SmoothGradCAMpp(resnet, [layer], num_samples=2, std=0.5, seed=3)(x64, TARGETS)
    b = pc.SmoothGradCAMpp(resnet, [layer], num_samples=2, std=0.5, seed=3)(x64, TARGETS)
    assert np.array_equal(a, b) and not np.allclose(a, smooth, atol=1e-3)
