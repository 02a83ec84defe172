"""KPCA-CAM: parity with pytorch-grad-cam 1.5.7 (scikit-learn's KernelPCA per image), the linear
kernel as Eigen-CAM, class-agnostic and gradient-free behaviour, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytorch_cam as pc
from pytorch_cam.methods import METHODS
from pytorch_cam.utils.svd_on_activations import get_2d_projection_kernel

LAYERS = [
    ("resnet18", "layer4.1", 96),
    ("resnet18", "layer3.1", 96),
    ("vgg11", "features.19", 64),
    ("vgg11", "features.14", 64),
]


def batch(size: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, size, size)


def peer(model, layer, x, **kwargs) -> np.ndarray:
    from pytorch_grad_cam import KPCA_CAM as PeerKPCA

    with PeerKPCA(model=model, target_layers=[layer], **kwargs) as cam:
        return cam(input_tensor=x, targets=None)


@pytest.mark.parametrize("arch, path, size", LAYERS)
def test_parity_with_grad_cam(request, pearson, arch, path, size):
    # scikit-learn fixes the sign (svd_flip: the largest-magnitude entry positive) and so do we:
    # the maps agree as they are, not only up to sign.
    pytest.importorskip("pytorch_grad_cam")
    model = request.getfixturevalue(arch)
    layer = model.get_submodule(path)
    x = batch(size)
    ours = pc.KPCA_CAM(model, [layer])(x)
    theirs = peer(model, layer, x)
    assert pearson(ours, theirs).min() >= 0.99
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


@pytest.mark.parametrize(
    "kernel, gamma", [("linear", None), ("poly", None), ("rbf", None), ("cosine", None), ("rbf", 0.05)]
)
def test_parity_other_kernels(resnet18, pearson, kernel, gamma):
    pytest.importorskip("pytorch_grad_cam")
    layer = resnet18.layer3[-1]
    x = batch(96)
    ours = pc.KPCA_CAM(resnet18, [layer], kernel=kernel, gamma=gamma)(x)
    theirs = peer(resnet18, layer, x, kernel=kernel, gamma=gamma)
    assert pearson(ours, theirs).min() >= 0.99
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_linear_kernel_is_eigen_cam(resnet18):
    # Linear kernel PCA is PCA: sqrt(lambda) v of the centred Gram matrix is the centred data
    # projected on the first principal direction, with the same sign rule as Eigen-CAM.
    x = batch(96)
    for layer in (resnet18.layer3[-1], resnet18.layer4[-1]):
        ours = pc.KPCA_CAM(resnet18, [layer], kernel="linear")(x)
        np.testing.assert_allclose(ours, pc.EigenCAM(resnet18, [layer])(x), atol=1e-4)


def test_kernel_and_gamma_are_used(resnet18):
    x = batch(96)
    layer = resnet18.layer3[-1]
    default = pc.KPCA_CAM(resnet18, [layer])(x)
    assert np.abs(default - pc.KPCA_CAM(resnet18, [layer], kernel="rbf")(x)).max() > 1e-2
    rbf = pc.KPCA_CAM(resnet18, [layer], kernel="rbf", gamma=0.05)(x)
    assert np.abs(rbf - pc.KPCA_CAM(resnet18, [layer], kernel="rbf", gamma=0.5)(x)).max() > 1e-2


def test_layer_map_is_the_shared_projection(tiny_cnn):
    # One implementation: the layer map is get_2d_projection_kernel of the activations.
    model = tiny_cnn()
    cam = pc.KPCA_CAM(model, [model.features], kernel="poly", gamma=0.3)
    torch.manual_seed(3)
    x = torch.randn(3, 3, 16, 16)
    call = cam.capture_pass(x, None)
    ctx = cam.layer_context(call, 0)
    expected = get_2d_projection_kernel(ctx.activations.numpy(), "poly", 0.3)
    np.testing.assert_allclose(cam.layer_cam(ctx, eigen_smooth=False).numpy(), expected, atol=1e-5)
    # Batched eigendecompositions: an image's map does not depend on its batch mates.
    single = cam.layer_cam(cam.layer_context(cam.capture_pass(x[1:2], None), 0), eigen_smooth=False)
    torch.testing.assert_close(cam.layer_cam(ctx, eigen_smooth=False)[1:2], single, rtol=1e-4, atol=1e-5)


def test_class_agnostic_gradient_free(tiny_cnn):
    model = tiny_cnn()
    flags = [p.requires_grad for p in model.parameters()]
    torch.manual_seed(3)
    x = torch.randn(2, 3, 16, 16)
    cam = pc.KPCA_CAM(model, [model.features])
    assert not cam.uses_gradients
    a = cam(x, [0, 1])
    np.testing.assert_array_equal(a, cam(x, [4, 2]))
    np.testing.assert_array_equal(a, cam(x, eigen_smooth=True))
    with torch.no_grad():
        np.testing.assert_array_equal(a, cam(x))
    assert a.dtype == np.float32 and a.shape == (2, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags


def test_registered_and_errors(tiny_cnn):
    assert METHODS["kpcacam"] is pc.KPCA_CAM
    model = tiny_cnn()
    for kernel in ("gaussian", "precomputed", "RBF", len):
        with pytest.raises(ValueError, match="'sigmoid'"):
            pc.KPCA_CAM(model, [model.features], kernel=kernel)
    for gamma in (0, -1.0, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="gamma must be a positive number"):
            pc.KPCA_CAM(model, [model.features], kernel="rbf", gamma=gamma)
