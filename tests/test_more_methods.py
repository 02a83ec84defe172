"""HiResCAM, LayerCAM, EigenGradCAM, GradCAMElementWise, FullGrad, CAM, SS-CAM, IS-CAM,
Smooth Grad-CAM++ and RandomCAM: parity with pytorch-grad-cam / torchcam, closed forms, properties."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import pytorch_cam as pc
from pytorch_cam.base_cam import min_max_scale, resize_maps
from pytorch_cam.methods import METHODS
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

CLASSES = [3, 7]
NEW = ["hirescam", "layercam", "eigengradcam", "gradcamelementwise", "fullgrad", "cam", "sscam", "iscam"]
NEW += ["smoothgradcampp", "randomcam"]


def corr(a, b) -> list:
    a, b = np.asarray(a), np.asarray(b)
    return [float(np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1]) for i in range(len(a))]


def torchcam_to_ours(raw: torch.Tensor, size) -> np.ndarray:
    """torchcam's unnormalised map -> our pipeline (ReLU, min-max, upsample, min-max)."""
    return min_max_scale(resize_maps(min_max_scale(torch.relu(raw.detach())), size)).numpy()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def x64():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)


@pytest.fixture(scope="module")
def tiny():
    """A small CNN whose explained layer is a convolution (activations of both signs)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 5),
    ).eval()


@pytest.fixture(scope="module")
def x32():
    torch.manual_seed(2)
    return torch.randn(2, 3, 32, 32)


def targets(classes=CLASSES):
    return [ClassifierOutputTarget(c) for c in classes]


# ---------------------------------------------------------------- parity with pytorch-grad-cam
@pytest.mark.parametrize("name", ["HiResCAM", "LayerCAM", "GradCAMElementWise", "EigenGradCAM"])
def test_parity_with_grad_cam_inner_layer(resnet, x64, name, monkeypatch):
    import pytorch_grad_cam as pg
    import pytorch_grad_cam.eigen_grad_cam as egc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as GT
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    # grad-cam leaves the principal component's sign to the SVD; we fix it like its own sign-corrected helper.
    monkeypatch.setattr(egc, "get_2d_projection", get_2d_projection_with_sign_correction)
    ours = getattr(pc, name)(resnet, [resnet.layer3[-1]])(x64, targets())
    theirs = getattr(pg, name)(resnet, [resnet.layer3[-1]])(x64, [GT(c) for c in CLASSES])
    assert min(corr(ours, theirs)) >= 0.99


def test_fullgrad_parity_with_grad_cam(resnet, x64):
    import pytorch_grad_cam as pg
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as GT

    resnet.zero_grad(set_to_none=True)  # grad-cam's backward() fills .grad; ours must not
    ours = pc.FullGrad(resnet, [])(x64, targets())
    assert all(p.grad is None for p in resnet.parameters())
    assert all(not m._forward_hooks for m in resnet.modules())
    theirs = pg.FullGrad(resnet, [])(x64, [GT(c) for c in CLASSES])
    resnet.zero_grad(set_to_none=True)
    assert min(corr(ours, theirs)) >= 0.99


def test_fullgrad_errors_and_layers(resnet, caplog):
    with caplog.at_level(logging.WARNING, logger="pytorch_cam"):
        cam = pc.FullGrad(resnet, [resnet.layer4[-1]])
    assert "ignores target_layers" in caplog.text
    assert len(cam.target_layers) == sum(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    with pytest.raises(ValueError, match="no Conv2d/Conv3d/BatchNorm2d/BatchNorm3d layer with a bias"):
        pc.FullGrad(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Flatten()), [])


# ---------------------------------------------------------------- closed forms
def _acts_and_grads(model, layer, x, classes):
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    out = model(x)
    handle.remove()
    score = out[torch.arange(len(classes)), torch.tensor(classes)].sum()
    (g,) = torch.autograd.grad(score, store["a"])
    return store["a"].detach(), g


def _finish(cam, size):
    return min_max_scale(resize_maps(min_max_scale(torch.relu(cam)), size)).numpy()


def test_elementwise_and_layercam_closed_form_with_signed_activations(tiny, x32):
    a, g = _acts_and_grads(tiny, tiny[4], x32, [1, 2])
    assert (a < 0).any(), "the explained conv must produce negative activations for this test to mean anything"
    expect = {
        "HiResCAM": (g * a).sum(1),
        "LayerCAM": (torch.relu(g) * a).sum(1),
        "GradCAMElementWise": torch.relu(g * a).sum(1),
    }
    for name, cam in expect.items():
        ours = getattr(pc, name)(tiny, [tiny[4]])(x32, targets([1, 2]))
        np.testing.assert_allclose(ours, _finish(cam, (32, 32)), atol=1e-5, err_msg=name)
    # The three rules really differ on signed activations.
    layer = pc.LayerCAM(tiny, [tiny[4]])(x32, targets([1, 2]))
    elem = pc.GradCAMElementWise(tiny, [tiny[4]])(x32, targets([1, 2]))
    assert np.abs(layer - elem).max() > 1e-3


def test_capture_sees_layer_output_before_later_inplace_ops():
    """bn -> ReLU(inplace=True): activations and gradients are the BN output's, not the ReLU's."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.Conv2d(6, 4, 1), nn.Flatten()
    )
    model.eval()
    reference = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU) else m for m in model])
    x = torch.randn(2, 3, 8, 8)
    a, g = _acts_and_grads(nn.Sequential(reference, nn.Identity()), reference[1], x, [5, 9])
    assert (a < 0).any()
    ours = pc.HiResCAM(model, [model[1]])(x, targets([5, 9]))
    np.testing.assert_allclose(ours, _finish((g * a).sum(1), (8, 8)), atol=1e-5)


def test_cam_equals_gradcam_on_gap_linear_and_torchcam(resnet, x64):
    ours = pc.CAM(resnet, [resnet.layer4[-1]])(x64, targets())
    grad_cam = pc.GradCAM(resnet, [resnet.layer4[-1]])(x64, targets())
    np.testing.assert_allclose(ours, grad_cam, atol=1e-5)  # GAP + linear: dy/dA = W_k / (H W)
    from torchcam.methods import CAM as TorchcamCAM

    with TorchcamCAM(resnet, resnet.layer4[-1], resnet.fc, input_shape=(3, 64, 64)) as extractor:
        with torch.no_grad():
            resnet(x64)
        raw = extractor(class_idx=CLASSES, normalized=False)[0]
    assert min(corr(ours, torchcam_to_ours(raw, (64, 64)))) >= 0.99


def test_cam_errors(resnet, x64):
    with pytest.raises(ValueError, match=r"no nn.Linear with in_features == 256"):
        pc.CAM(resnet, [resnet.layer3[-1]])(x64, targets())
    with pytest.raises(TypeError, match="each target needs a class index"):
        pc.CAM(resnet, [resnet.layer4[-1]])(x64, [lambda out: out[0]] * 2)
    with pytest.raises(ValueError, match="fc_layer is not a submodule"):
        pc.CAM(resnet, [resnet.layer4[-1]], fc_layer=nn.Linear(512, 3))
    with pytest.raises(ValueError, match="fc_layer takes 512 features but the target layer has 256"):
        pc.CAM(resnet, [resnet.layer3[-1]], fc_layer=resnet.fc)(x64, targets())


def test_random_cam_closed_form_and_seed(resnet, x64):
    a, _ = _acts_and_grads(resnet, resnet.layer3[-1], x64, CLASSES)
    w = 2 * torch.rand((2, a.shape[1]), generator=torch.Generator().manual_seed(5)) - 1
    ours = pc.RandomCAM(resnet, [resnet.layer3[-1]], seed=5)(x64, targets())
    np.testing.assert_allclose(ours, _finish((w[:, :, None, None] * a).sum(1), (64, 64)), atol=1e-5)
    cam = pc.RandomCAM(resnet, [resnet.layer3[-1]], seed=5)
    first, second = cam(x64, targets()), cam(x64, targets())
    assert np.allclose(first, ours) and not np.allclose(first, second)  # a reproducible stream of maps


# ---------------------------------------------------------------- Score-CAM family vs torchcam
def _torchcam_score(cls, model, layer, x, classes, seed=None, **kw):
    if seed is not None:
        torch.manual_seed(seed)
    with cls(model, layer, input_shape=tuple(x.shape[1:]), **kw) as extractor:
        with torch.no_grad():
            model(x)
        raw = extractor(class_idx=classes, normalized=False)[0]
    return torchcam_to_ours(raw, x.shape[2:])


def test_sscam_matches_torchcam_with_the_same_noise(tiny, x32):
    from torchcam.methods import SSCAM as TorchcamSSCAM

    # One chunk holds every (image, channel) pair, so our generator draws the noise in torchcam's order.
    ours = pc.SSCAM(tiny, [tiny[4]], num_samples=8, std=2.0, seed=0, batch_size=1024, progress=False)
    theirs = _torchcam_score(TorchcamSSCAM, tiny, tiny[4], x32, [1, 2], seed=0, num_samples=8, std=2.0, batch_size=1024)
    assert min(corr(ours(x32, targets([1, 2])), theirs)) >= 0.99


def test_sscam_seed_and_zero_noise(tiny, x32):
    def run(seed, std=2.0):
        return pc.SSCAM(tiny, [tiny[4]], num_samples=3, std=std, seed=seed, progress=False)(x32, targets([1, 2]))

    assert np.array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))
    score = pc.ScoreCAM(tiny, [tiny[4]], progress=False)(x32, targets([1, 2]))
    np.testing.assert_allclose(run(None, std=0.0), score, atol=1e-5)
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        pc.SSCAM(tiny, [tiny[4]], num_samples=0)


def test_iscam_matches_torchcam(tiny, x32):
    from torchcam.methods import ISCAM as TorchcamISCAM

    ours = pc.ISCAM(tiny, [tiny[4]], num_samples=10, progress=False)(x32, targets([1, 2]))
    theirs = _torchcam_score(TorchcamISCAM, tiny, tiny[4], x32, [1, 2], num_samples=10)
    assert min(corr(ours, theirs)) >= 0.99


# ---------------------------------------------------------------- Smooth Grad-CAM++
def test_smoothgradcampp_matches_torchcam_at_the_pooled_layer(resnet, x64):
    from torchcam.methods import SmoothGradCAMpp as TorchcamSmooth

    ours = pc.SmoothGradCAMpp(resnet, [resnet.layer4[-1]], num_samples=4, std=0.3, seed=0)(x64, targets())
    torch.manual_seed(0)  # torchcam draws from the global generator, in the same order as ours
    with TorchcamSmooth(resnet, resnet.layer4[-1], num_samples=4, std=0.3, input_shape=(3, 64, 64)) as extractor:
        resnet(x64)
        raw = extractor(class_idx=CLASSES, normalized=False)[0]
    assert min(corr(ours, torchcam_to_ours(raw, (64, 64)))) >= 0.99


def test_smoothgradcampp_zero_noise_is_gradcampp_and_seeded(resnet, x64):
    layer = resnet.layer3[-1]
    smooth = pc.SmoothGradCAMpp(resnet, [layer], num_samples=1, std=0.0)(x64, targets())
    np.testing.assert_allclose(smooth, pc.GradCAMPlusPlus(resnet, [layer])(x64, targets()), atol=1e-4)
    a = pc.SmoothGradCAMpp(resnet, [layer], num_samples=2, std=0.5, seed=3)(x64, targets())
    b = pc.SmoothGradCAMpp(resnet, [layer], num_samples=2, std=0.5, seed=3)(x64, targets())
    assert np.array_equal(a, b) and not np.allclose(a, smooth, atol=1e-3)


# ---------------------------------------------------------------- properties of every new method
FAST_KW = {
    "sscam": {"num_samples": 2, "cskip": 8, "seed": 0, "progress": False},
    "iscam": {"num_samples": 2, "cskip": 8, "progress": False},
    "smoothgradcampp": {"num_samples": 2, "seed": 0},
    "randomcam": {"seed": 0},
}


@pytest.mark.parametrize("name", NEW)
def test_new_method_properties(resnet, x64, name):
    assert name in METHODS and METHODS[name].__name__ in pc.__all__
    layer = resnet.layer4[-1] if name == "cam" else resnet.layer3[-1]
    flags = [(m, m.training) for m in resnet.modules()]
    maps = METHODS[name](resnet, [layer], **FAST_KW.get(name, {}))(x64, targets())
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert all(m.training == t for m, t in flags)
    assert all(not m._forward_hooks for m in resnet.modules())
