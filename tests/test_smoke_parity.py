"""Quick parity of the six core methods with pytorch-grad-cam 1.5.7 at an inner ResNet layer."""

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import AblationCAM as PAblation
from pytorch_grad_cam import GradCAM as PGrad
from pytorch_grad_cam import GradCAMPlusPlus as PGradPP
from pytorch_grad_cam import ScoreCAM as PScore
from pytorch_grad_cam import XGradCAM as PXGrad
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import pytorch_cam as pc

PAIRS = [
    (pc.GradCAM, PGrad),
    (pc.GradCAMPlusPlus, PGradPP),
    (pc.XGradCAM, PXGrad),
    (pc.ScoreCAM, PScore),
    (pc.AblationCAM, PAblation),
]


@pytest.fixture(scope="module")
def model_and_input():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    return model, torch.randn(1, 3, 64, 64)


@pytest.mark.parametrize("ours,peer", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_inner_layer_parity(model_and_input, ours, peer):
    model, x = model_and_input
    layer = model.layer3[-1]
    targets = [ClassifierOutputTarget(7)]
    kwargs = {"progress": False} if ours in (pc.ScoreCAM, pc.AblationCAM) else {}
    a = ours(model, [layer], **kwargs)(x, targets)
    ref = peer(model, [layer])
    ref.batch_size = 256
    b = ref(x, targets)
    assert a.shape == b.shape == (1, 64, 64)
    assert np.corrcoef(a[0].ravel(), b[0].ravel())[0, 1] >= 0.99
