"""RefineCAM: the product of per-layer maps from one pass, any per-layer base method, errors, parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FrozenWeights

from pytorch_cam import FEM, FullGrad, GradCAM, GradCAMPlusPlus, RefineCAM, ScoreCAM, SobelCAM
from pytorch_cam.cli import default_target_layers
from pytorch_cam.methods import METHODS

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.refine_cam import RefineCAM as PeerRefineCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as PeerTarget  # noqa: E402

MIN_CORR = 0.99
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def minmax(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(a.shape[0], -1)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    return ((flat - lo) / (hi - lo)).reshape(a.shape)


def product_of_single_layer_maps(base, model, layers, x, targets, **kwargs) -> np.ndarray:
    """grad-cam's definition: one base CAM per layer, the product of their maps, min-max scaled."""
    eigen = kwargs.pop("eigen", False)
    maps = [base(model, [layer], **kwargs)(x, targets, eigen_smooth=eigen) for layer in layers]
    return minmax(np.prod(maps, axis=0))


def counting(model):
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_registered_and_built_like_the_cli(resnet18):
    assert METHODS["refinecam"] is RefineCAM and not RefineCAM.batched
    with RefineCAM(model=resnet18, target_layers=default_target_layers(resnet18, "resnet18")) as cam:
        assert cam.base_method is GradCAMPlusPlus and cam.layers == [resnet18.layer4[-1]]
        maps = cam(torch.randn(1, 3, 64, 64), targets=None, aug_smooth=False, eigen_smooth=False)
    assert maps.shape == (1, 64, 64) and maps.dtype == np.float32 and maps.max() == 1.0


@pytest.mark.parametrize("base", [GradCAMPlusPlus, GradCAM])
def test_product_of_the_base_methods_maps(tiny_cnn, base):
    model = tiny_cnn()
    layers = [model.conv1, model.features]  # 32x32 and 16x16 (upsampled)
    ours = RefineCAM(model, layers, base_method=base)(X, [1, 3])
    np.testing.assert_allclose(ours, product_of_single_layer_maps(base, model, layers, X, [1, 3]), atol=1e-5)


def test_single_layer_is_the_base_method(tiny_cnn):
    model = tiny_cnn()
    ours = RefineCAM(model, [model.features])(X, [0, 4])
    np.testing.assert_allclose(ours, GradCAMPlusPlus(model, [model.features])(X, [0, 4]), atol=1e-6)


def test_one_forward_for_all_layers(tiny_cnn):
    model = tiny_cnn()
    calls, handle = counting(model)
    try:
        RefineCAM(model, [model.conv1, model.relu1, model.features])(X, [1, 2])
    finally:
        handle.remove()
    assert len(calls) == 1


def test_the_product_gates_every_layer(tiny_cnn):
    # Where any layer's map is zero the refined map is zero.
    model = tiny_cnn()
    layers = [model.conv1, model.features]
    refined = RefineCAM(model, layers, base_method=GradCAM)(X, [1, 3])
    for layer in layers:
        assert not refined[GradCAM(model, [layer])(X, [1, 3]) == 0].any()


def test_eigen_smooth_is_eigen_smooth(tiny_cnn):
    # pytorch-grad-cam passes eigen_smooth to the base CAM's aug_smooth slot; here it projects.
    model = tiny_cnn()
    layers = [model.conv1, model.features]
    cam = RefineCAM(model, layers, base_method=GradCAM)
    expected = product_of_single_layer_maps(GradCAM, model, layers, X, [1, 3], eigen=True)
    np.testing.assert_allclose(cam(X, [1, 3], eigen_smooth=True), expected, atol=1e-5)
    # The third positional argument is eigen_smooth, as in pytorch-grad-cam's signature.
    np.testing.assert_array_equal(cam(X, [1, 3], True), cam.forward(X, [1, 3], eigen_smooth=True))


def test_aug_smooth(tiny_cnn):
    model = tiny_cnn()
    maps = RefineCAM(model, [model.conv1, model.features])(X, [1, 3], aug_smooth=True)
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and 0 <= maps.min() and maps.max() <= 1
    assert not np.allclose(maps, RefineCAM(model, [model.conv1, model.features])(X, [1, 3]), atol=1e-3)


def test_kwargs_reach_the_base_method(tiny_cnn):
    model = tiny_cnn()
    layers = [model.relu1, model.relu2]
    ours = RefineCAM(model, layers, base_method=FEM, k=1)(X)
    assert ours.any()
    np.testing.assert_allclose(ours, product_of_single_layer_maps(FEM, model, layers, X, None, k=1), atol=1e-5)
    cam = RefineCAM(model, layers, base_method=ScoreCAM, batch_size=4, progress=False)
    assert cam.base_cam.batch_size == 4 and not cam.uses_gradients


def test_settings_come_from_the_base_cam(tiny_cnn):
    model = tiny_cnn()
    cam = RefineCAM(model, None)
    assert cam.target_layers is None and cam.layers == [] and cam.model is model
    cam(X)  # finds the default layer with a dry forward, like every method
    assert cam.layers == [model.relu2] and cam.inferred.target_layers == [model.relu2]


@pytest.mark.parametrize(
    "base, error, match",
    [
        (FullGrad, ValueError, "FullGrad does not explain its target layers one by one"),
        (SobelCAM, ValueError, "SobelCAM does not explain its target layers one by one"),
        (pytorch_grad_cam.GradCAM, TypeError, r"base_method must be a CAM class of pytorch_cam \(a BaseCAM subclass"),
        ("gradcam", TypeError, r"base_method must be a CAM class of pytorch_cam \(a BaseCAM subclass"),
        (RefineCAM, TypeError, r"base_method must be a CAM class of pytorch_cam \(a BaseCAM subclass"),
    ],
)
def test_bad_base_methods(tiny_cnn, base, error, match):
    model = tiny_cnn()
    with pytest.raises(error, match=match):
        RefineCAM(model, [model.features], base_method=base)


def test_base_method_errors_propagate(tiny_cnn):
    model = tiny_cnn()
    with pytest.raises(ValueError, match="target_layers is empty"):
        RefineCAM(model, [])
    with pytest.raises(ValueError, match="k must be a finite number"):
        RefineCAM(model, [model.features], base_method=FEM, k="2")


# ---------------------------------------------------------------- parity with pytorch-grad-cam 1.5.7
def peer_maps(model, layers, x, classes, base):
    cam = PeerRefineCAM(FrozenWeights(model), layers, base_method=getattr(pytorch_grad_cam, base.__name__))
    return cam(x, [PeerTarget(c) for c in classes])


def assert_parity(model, layers, x, base, pearson):
    ours = RefineCAM(model=model, target_layers=layers, base_method=base)(x, [3, 10])
    corr = pearson(ours, peer_maps(model, layers, x, [3, 10], base))
    assert (corr >= MIN_CORR).all(), corr


@pytest.fixture(scope="module")
def x64():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("base", [GradCAMPlusPlus, GradCAM])
@pytest.mark.parametrize("layers", ["2-3-4", "2-3"])
def test_parity_resnet18(resnet18, x64, pearson, base, layers):
    chosen = [getattr(resnet18, f"layer{i}")[-1] for i in layers.split("-")]
    assert_parity(resnet18, chosen, x64, base, pearson)


@pytest.mark.parametrize("base", [GradCAMPlusPlus, GradCAM])
def test_parity_vgg11(vgg11, x64, pearson, base):
    # An inner ReLU (8x8) and the last conv ReLU (4x4).
    assert_parity(vgg11, [vgg11.features[14], vgg11.features[19]], x64, base, pearson)
