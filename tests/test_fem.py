"""FEM (Feature Explanation Method): closed forms, 3-D volumes, class-agnosticism, errors, parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_cam import FEM
from pytorch_cam.methods import METHODS

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as PeerTarget  # noqa: E402

MIN_CORR = 0.99


class Probe(nn.Module):
    """The target layer ``probe`` sees the input itself, so the activations are chosen by the test."""

    def __init__(self, channels: int, dims: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.probe = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.probe(x)).flatten(1))


def probe_model(channels: int, dims: int = 2) -> Probe:
    torch.manual_seed(0)
    return Probe(channels, dims).eval()


def minmax(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(a.shape[0], -1)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    return ((flat - lo) / (hi - lo)).reshape(a.shape)


def reference(acts: np.ndarray, k: float) -> np.ndarray:
    """The paper's k-sigma weights with numpy (population std), then ReLU and min-max."""
    axes = tuple(range(2, acts.ndim))
    th = acts.mean(axis=axes, keepdims=True) + k * acts.std(axis=axes, keepdims=True)
    weights = (acts > th).mean(axis=axes, keepdims=True)
    return minmax(np.maximum((weights * acts).sum(axis=1), 0))


def test_registered():
    assert METHODS["fem"] is FEM and not FEM.uses_gradients


def test_weights_are_the_fraction_of_k_sigma_outliers():
    # Channel 0: one spike of 16 positions; channel 1: constant (std 0: nothing exceeds the mean);
    # channel 2: two spikes; channel 3: a smooth ramp (no value 2 sigma above the mean).
    x = torch.zeros(1, 4, 4, 4)
    x[0, 0, 1, 1] = 10.0
    x[0, 1] = 3.0
    x[0, 2, 0, 3] = x[0, 2, 3, 0] = 5.0
    x[0, 3] = torch.arange(16.0).reshape(4, 4)
    model = probe_model(4)
    cam = FEM(model, [model.probe])
    ctx_weights = cam.get_cam_weights(x, model.probe, [], x, None)
    torch.testing.assert_close(ctx_weights, torch.tensor([[1 / 16, 0.0, 2 / 16, 0.0]]))
    expected = minmax((x[:, 0] * (1 / 16) + x[:, 2] * (2 / 16)).numpy())
    np.testing.assert_allclose(cam(x, [0]), expected, atol=1e-6)


def test_k_sets_the_threshold():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 0] = 9.0  # mean 1, population std sqrt(8): z = 8 / sqrt(8) = 2.83
    model = probe_model(1)
    for k, weight in [(0, 1 / 9), (2.8, 1 / 9), (2.9, 0.0), (-0.4, 1.0)]:
        w = FEM(model, [model.probe], k=k).get_cam_weights(x, model.probe, [], x, None)
        torch.testing.assert_close(w, torch.tensor([[weight]]), msg=f"k={k}")


def test_population_std_not_sample_std():
    # z of the spike among 6 values: sqrt(5) = 2.236 with the population std, 2.04 with the sample
    # std; k = 2.1 separates the two.
    x = torch.zeros(1, 1, 1, 6)
    x[..., 0] = 1.0
    model = probe_model(1)
    w = FEM(model, [model.probe], k=2.1).get_cam_weights(x, model.probe, [], x, None)
    torch.testing.assert_close(w, torch.tensor([[1 / 6]]))


def test_random_activations_match_numpy_reference():
    x = torch.randn(2, 6, 9, 7, generator=torch.Generator().manual_seed(1))
    model = probe_model(6)
    for k in (2, 1.5):
        np.testing.assert_allclose(FEM(model, [model.probe], k=k)(x, [0, 1]), reference(x.numpy(), k), atol=1e-5)


def test_volumes():
    x = torch.randn(2, 5, 4, 6, 5, generator=torch.Generator().manual_seed(2))
    model = probe_model(5, dims=3)
    maps = FEM(model, [model.probe])(x, [0, 1])
    assert maps.shape == (2, 4, 6, 5) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, reference(x.numpy(), 2), atol=1e-5)


def test_class_agnostic(tiny_cnn):
    model = tiny_cnn()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    cam = FEM(model, [model.relu1])
    np.testing.assert_array_equal(cam(x, [0, 1]), cam(x, [4, 2]))
    np.testing.assert_array_equal(cam(x, [0, 1]), cam(x))


def test_eigen_smooth_projects_the_weighted_activations():
    x = torch.randn(1, 6, 8, 8, generator=torch.Generator().manual_seed(4))
    model = probe_model(6)
    cam = FEM(model, [model.probe])
    weighted = (cam.get_cam_weights(x, model.probe, [], x, None)[..., None, None] * x)[0].numpy()
    flat = weighted.reshape(6, -1).T.astype(np.float64)
    flat -= flat.mean(axis=0)
    proj = flat @ np.linalg.svd(flat, full_matrices=False)[2][0]
    proj = -proj if abs(proj.min()) > abs(proj.max()) else proj
    expected = minmax(np.maximum(proj, 0).reshape(1, 8, 8))
    np.testing.assert_allclose(cam(x, [0], eigen_smooth=True), expected, atol=1e-5)


@pytest.mark.parametrize("k", ["2", float("nan"), float("inf"), True, None])
def test_bad_k(tiny_cnn, k):
    model = tiny_cnn()
    with pytest.raises(ValueError, match="k must be a finite number"):
        FEM(model, [model.features], k=k)


def test_too_few_positions_give_zeros():
    # 2x2 = 4 positions: no value can be 2 sigma above the mean (max z = sqrt(3)).
    x = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(5))
    model = probe_model(3)
    assert not FEM(model, [model.probe])(x, [0, 1]).any()


# ---------------------------------------------------------------- parity with pytorch-grad-cam 1.5.7
def peer_maps(model, layer, x, classes):
    try:
        cam = pytorch_grad_cam.FEM(model=model, target_layers=[layer])
        return cam(input_tensor=x, targets=[PeerTarget(c) for c in classes])
    finally:
        model.zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def x128():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(6))  # layer4: 4x4


@pytest.fixture(scope="module")
def x64():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("where", ["layer4", "layer3"])
def test_parity_resnet18(resnet18, x128, pearson, where):
    layer = getattr(resnet18, where)[-1]
    ours = FEM(model=resnet18, target_layers=[layer])(x128, [3, 10])
    corr = pearson(ours, peer_maps(resnet18, layer, x128, [3, 10]))
    assert (corr >= MIN_CORR).all(), corr


@pytest.mark.parametrize("index", [19, 14], ids=["last-relu", "inner-relu"])
def test_parity_vgg11(vgg11, x64, pearson, index):
    layer = vgg11.features[index]
    ours = FEM(model=vgg11, target_layers=[layer])(x64, [3, 10])
    corr = pearson(ours, peer_maps(vgg11, layer, x64, [3, 10]))
    assert (corr >= MIN_CORR).all(), corr
