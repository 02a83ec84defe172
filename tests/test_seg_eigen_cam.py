"""Seg-Eigen-CAM: closed forms (classification and segmentation), sign correction, parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FrozenWeights
from torch import nn

from pytorch_cam import EigenCAM, SegEigenCAM
from pytorch_cam.methods import METHODS
from pytorch_cam.utils.model_targets import SemanticSegmentationTarget

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as PeerTarget  # noqa: E402
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget as PeerSegTarget  # noqa: E402

MIN_CORR = 0.99


def minmax(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(a.shape[0], -1)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    return ((flat - lo) / (hi - lo)).reshape(a.shape)


def projected(weighted: np.ndarray) -> np.ndarray:
    """The paper's map of (B, C, H, W) weighted activations with numpy: first principal component
    of the centred positions x channels matrix, sign-corrected (|min| > |max| flips), ReLU, min-max."""
    maps = []
    for g in weighted.astype(np.float64):
        flat = g.reshape(g.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        proj = flat @ np.linalg.svd(flat, full_matrices=False)[2][0]
        if abs(proj.min()) > abs(proj.max()):
            proj = -proj
        maps.append(np.maximum(proj, 0).reshape(g.shape[1:]))
    return minmax(np.stack(maps))


class LinearHead(nn.Module):
    """probe (identity on the input) -> 1x1 conv per class -> sum over positions: dy_k/dA_c = w_kc everywhere."""

    def __init__(self, channels: int, classes: int = 3) -> None:
        super().__init__()
        self.probe = nn.Identity()
        self.head = nn.Conv2d(channels, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.probe(x)).sum(dim=(2, 3))


class TinyFCN(nn.Module):
    """A fully convolutional segmenter: conv -> ReLU ('features') -> 1x1 class head, (B, K, H, W) logits."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.features = nn.ReLU()
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.conv(x)))


def seeded(cls, *args):
    torch.manual_seed(0)
    return cls(*args).eval()


X = torch.randn(2, 6, 8, 8, generator=torch.Generator().manual_seed(1))


def test_registered_and_gradient_based():
    assert METHODS["segeigencam"] is SegEigenCAM
    assert SegEigenCAM.uses_gradients and SegEigenCAM.always_project


def test_closed_form_classification():
    model = seeded(LinearHead, 6)
    classes = [0, 2]
    w = model.head.weight.detach()[:, :, 0, 0].numpy()  # (classes, C)
    weighted = np.abs(w[classes])[:, :, None, None] * X.numpy()
    np.testing.assert_allclose(SegEigenCAM(model, [model.probe])(X, classes), projected(weighted), atol=1e-5)


def test_absolute_gradient_ignores_the_gradient_sign():
    # Negating the head flips every gradient; |dy/dA| and so the map stay the same.
    model = seeded(LinearHead, 6)
    flipped = seeded(LinearHead, 6)
    with torch.no_grad():
        flipped.head.weight.neg_()
    a = SegEigenCAM(model, [model.probe])(X, [0, 1])
    np.testing.assert_allclose(SegEigenCAM(flipped, [flipped.probe])(X, [0, 1]), a, atol=1e-6)


def test_gradient_weighting_differs_from_eigencam():
    model = seeded(LinearHead, 6)
    ours = SegEigenCAM(model, [model.probe])(X, [0, 1])
    assert not np.allclose(ours, EigenCAM(model, [model.probe])(X, [0, 1]), atol=1e-2)


def test_sign_correction_points_the_map_at_the_dominant_structure():
    # One strong blob on a flat background: whatever sign the SVD returns, the blob is the map's peak.
    x = torch.zeros(1, 4, 8, 8)
    x[0, :, 2:4, 5:7] = torch.tensor([3.0, 2.0, 4.0, 1.0])[:, None, None]
    x += 0.01 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    model = seeded(LinearHead, 4)
    cam = SegEigenCAM(model, [model.probe])(x, [0])[0]
    assert cam[2:4, 5:7].min() > 0.9 and np.delete(cam.ravel(), [21, 22, 29, 30]).max() < 0.1


def test_eigen_smooth_changes_nothing(tiny_cnn):
    model = tiny_cnn()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    cam = SegEigenCAM(model, [model.features])
    np.testing.assert_array_equal(cam(x, [1, 2], eigen_smooth=True), cam(x, [1, 2]))


def seg_case():
    model = seeded(TinyFCN)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    mask = np.zeros((16, 16), dtype=np.float32)
    mask[3:9, 2:12] = 1.0
    return model, x, mask


def test_closed_form_segmentation_target():
    # With a 1x1 head, d(sum_{p in mask} y_k[p]) / dA_c[p] = w_kc * mask[p].
    model, x, mask = seg_case()
    targets = [SemanticSegmentationTarget(1, mask), SemanticSegmentationTarget(2, mask)]
    with torch.no_grad():
        acts = model.features(model.conv(x)).numpy()
    w = model.head.weight.detach()[:, :, 0, 0].numpy()
    weighted = np.abs(w[[1, 2]])[:, :, None, None] * mask * acts
    maps = SegEigenCAM(model, [model.features])(x, targets)
    np.testing.assert_allclose(maps, projected(weighted), atol=1e-5)


def test_segmentation_needs_explicit_targets():
    model, x, _ = seg_case()
    with pytest.raises(ValueError, match="SemanticSegmentationTarget"):
        SegEigenCAM(model, [model.features])(x)


# ---------------------------------------------------------------- parity with pytorch-grad-cam 1.5.7
def peer_maps(model, layer, x, targets):
    cam = pytorch_grad_cam.SegEigenCAM(model=FrozenWeights(model), target_layers=[layer])
    return cam(input_tensor=x, targets=targets)


def test_parity_segmentation(pearson):
    model, x, mask = seg_case()
    ours = SegEigenCAM(model, [model.conv])(x, [SemanticSegmentationTarget(c, mask) for c in (0, 2)])
    peer = peer_maps(model, model.conv, x, [PeerSegTarget(c, mask) for c in (0, 2)])
    corr = pearson(ours, peer)
    assert (corr >= MIN_CORR).all(), corr


@pytest.fixture(scope="module")
def x64():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("where", ["layer4", "layer3"])
def test_parity_resnet18(resnet18, x64, pearson, where):
    layer = getattr(resnet18, where)[-1]
    ours = SegEigenCAM(model=resnet18, target_layers=[layer])(x64, [3, 10])
    corr = pearson(ours, peer_maps(resnet18, layer, x64, [PeerTarget(3), PeerTarget(10)]))
    assert (corr >= MIN_CORR).all(), corr


@pytest.mark.parametrize("index", [19, 14], ids=["last-relu", "inner-relu"])
def test_parity_vgg11(vgg11, x64, pearson, index):
    layer = vgg11.features[index]
    ours = SegEigenCAM(model=vgg11, target_layers=[layer])(x64, [3, 10])
    corr = pearson(ours, peer_maps(vgg11, layer, x64, [PeerTarget(3), PeerTarget(10)]))
    assert (corr >= MIN_CORR).all(), corr
