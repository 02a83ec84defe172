"""RandomCAM: uniform random channel weights in [-1, 1), a baseline for the metrics."""

from __future__ import annotations

import numpy as np
import torch

import pytorch_cam as pc
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

CLASSES = [3, 7]
TARGETS = [ClassifierOutputTarget(c) for c in CLASSES]


def test_random_cam_closed_form_and_seed(private_resnet18, x64, acts_and_grads, base_pipeline):
    resnet = private_resnet18
    a, _ = acts_and_grads(resnet, resnet.layer3[-1], x64, CLASSES)
    w = 2 * torch.rand((2, a.shape[1]), generator=torch.Generator().manual_seed(5)) - 1
    ours = pc.RandomCAM(resnet, [resnet.layer3[-1]], seed=5)(x64, TARGETS)
    np.testing.assert_allclose(ours, base_pipeline((w[:, :, None, None] * a).sum(1), (64, 64)), atol=1e-5)
    cam = pc.RandomCAM(resnet, [resnet.layer3[-1]], seed=5)
    first, second = cam(x64, TARGETS), cam(x64, TARGETS)
    assert np.allclose(first, ours) and not np.allclose(first, second)  # a reproducible stream of maps
