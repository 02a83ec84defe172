"""FinerCAM and FinerWeightedTarget: parity with pytorch-grad-cam 1.5.7, closed forms, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytorch_cam
from pytorch_cam import EigenCAM, FinerCAM, GradCAM, HiResCAM, ScoreCAM
from pytorch_cam.finer_cam import finer_targets
from pytorch_cam.methods import METHODS
from pytorch_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget, FinerWeightedTarget

pg = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget as PeerFinerTarget  # noqa: E402


@pytest.fixture(scope="module")
def x64():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def layers_of(name, model):
    return {
        "resnet-layer4": lambda: model.layer4[-1],
        "resnet-layer3": lambda: model.layer3[-1],
        "vgg-last": lambda: model.features[-1],
        "vgg-inner": lambda: model.features[14],
    }[name]()


def assert_parity(pearson, ours, peer):
    """Per-image correlation >= 0.99; a map that is constant (all zeros: nothing positive) must be so in both."""
    r = pearson(ours, peer)
    flat = np.isnan(r)
    np.testing.assert_allclose(ours[flat], peer[flat], atol=1e-5)
    assert (~flat).any() and r[~flat].min() >= 0.99, r


CASES = [("resnet18", "resnet-layer4"), ("resnet18", "resnet-layer3"), ("vgg11", "vgg-last"), ("vgg11", "vgg-inner")]


# ---------------------------------------------------------------- the target
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_finer_weighted_target_matches_peer_values_and_gradients_on_rows_and_batches(alpha):
    y = torch.randn(3, 10, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ours, peer = FinerWeightedTarget(4, [1, 7, 2], alpha), PeerFinerTarget(4, [1, 7, 2], alpha)
    for i in range(3):  # the pipeline calls a target on one 1-D output row
        a, b = ours(y[i]), peer(y[i])
        assert a.shape == () and torch.allclose(a, b, atol=1e-6)
        ga, gb = torch.autograd.grad(a, y)[0], torch.autograd.grad(b, y)[0]
        assert torch.allclose(ga, gb, atol=1e-6)  # the softmax weights are part of the graph
    assert torch.allclose(ours(y), peer(y), atol=1e-6) and ours(y).shape == (3,)


def test_finer_weighted_target_closed_form():
    y = torch.tensor([2.0, 0.0, 1.0, -1.0])
    p = torch.softmax(y, 0)
    expected = (p[2] * (2 - 0.5 * 1) + p[3] * (2 - 0.5 * -1)) / (p[2] + p[3])
    assert torch.allclose(FinerWeightedTarget(0, [2, 3], 0.5)(y), expected)
    # A single comparison class: the plain difference y_c - alpha y_d.
    assert torch.allclose(FinerWeightedTarget(0, [2], 1.0)(y), torch.tensor(1.0), atol=1e-6)
    # No comparison class: the main logit.
    assert FinerWeightedTarget(0, [], 1.0)(y) == 2.0
    with pytest.raises(IndexError, match="outside the model output"):
        FinerWeightedTarget(0, [9], 1.0)(y)
    with pytest.raises(TypeError, match="sequence of class indices"):
        FinerWeightedTarget(0, 3, 1.0)
    with pytest.raises(TypeError, match="main_category"):
        FinerWeightedTarget(1.5, [2], 1.0)


def test_comparison_classes_are_the_closest_logits_at_the_given_positions():
    y = torch.tensor([[0.0, 5.0, 4.0, 5.5, -3.0, 4.9], [1.0, 0.0, 3.0, 2.9, 1.1, 0.5]])
    top = y.argmax(dim=1)
    got = finer_targets(y, top, None, 1.0)
    # image 0: main 3 (5.5); distances: 5.0 -> .5, 4.9 -> .6, 4.0 -> 1.5
    assert (got[0].main_category, got[0].comparison_categories) == (3, [1, 5, 2])
    assert (got[1].main_category, got[1].comparison_categories) == (2, [3, 4, 0])
    got = finer_targets(y, torch.tensor([4, 0]), [1, 3], 0.5)
    assert (got[0].main_category, got[0].comparison_categories, got[0].alpha) == (4, [0, 5], 0.5)
    assert (got[1].main_category, got[1].comparison_categories) == (0, [4, 1])  # order: 0, 4, 5, 1, 3, 2
    # Positions past the number of classes are dropped; the default (1, 2, 3) is clamped.
    assert finer_targets(y[:, :3], top.clamp(max=2), [1, 2, 7], 1.0)[0].comparison_categories == [1, 0]
    assert finer_targets(y[:, :2], torch.tensor([1, 0]), None, 1.0)[0].comparison_categories == [0]


# ---------------------------------------------------------------- parity with pytorch-grad-cam
@pytest.mark.parametrize("arch,layer", CASES)
def test_parity_with_pytorch_grad_cam_top_class(request, pearson, x64, arch, layer):
    model = request.getfixturevalue(arch)
    target = layers_of(layer, model)
    ours = FinerCAM(model, [target])(x64)
    peer = pg.FinerCAM(model, [target])(x64)
    assert_parity(pearson, ours, peer)
    # Options: comparison strength, positions, a fixed main class.
    kw = dict(alpha=0.5, comparison_categories=[2, 4], target_idx=7)
    ours = FinerCAM(model, [target])(x64, **kw)
    peer = pg.FinerCAM(model, [target])(x64, **kw)
    assert_parity(pearson, ours, peer)


@pytest.mark.parametrize("arch,layer", CASES)
def test_parity_with_pytorch_grad_cam_explicit_targets(request, pearson, x64, arch, layer):
    model = request.getfixturevalue(arch)
    target = layers_of(layer, model)
    spec = [(3, [5, 9], 0.7), (1, [2], 1.0)]
    ours = FinerCAM(model, [target])(x64, [FinerWeightedTarget(*s) for s in spec])
    peer = pg.FinerCAM(model, [target])(x64, [PeerFinerTarget(*s) for s in spec])
    assert_parity(pearson, ours, peer)


def test_parity_with_another_base_method(resnet18, pearson, x64):
    layer = resnet18.layer3[-1]
    ours = FinerCAM(resnet18, [layer], base_method=HiResCAM)(x64)
    peer = pg.FinerCAM(resnet18, [layer], base_method=pg.HiResCAM)(x64)
    assert_parity(pearson, ours, peer)


# ---------------------------------------------------------------- semantics
def test_alpha_zero_is_the_base_method_on_the_top_class(resnet18, x64):
    layer = resnet18.layer3[-1]
    np.testing.assert_allclose(FinerCAM(resnet18, [layer])(x64, alpha=0), GradCAM(resnet18, [layer])(x64), atol=1e-5)
    assert not np.allclose(FinerCAM(resnet18, [layer])(x64), GradCAM(resnet18, [layer])(x64), atol=1e-3)


def test_class_targets_name_the_main_class_and_comparisons_are_picked(resnet18, x64):
    layer = resnet18.layer3[-1]
    with torch.no_grad():
        outputs = resnet18(x64)
    cats = [11, 500]
    explicit = finer_targets(outputs, torch.tensor(cats), None, 1.0)
    expected = GradCAM(resnet18, [layer])(x64, explicit)
    cam = FinerCAM(model=resnet18, target_layers=[layer])
    for targets in ([ClassifierOutputTarget(c) for c in cats], cats):
        got = cam(input_tensor=x64, targets=targets, aug_smooth=False, eigen_smooth=False)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # target_idx with targets=None: the same main class for every image.
    same = finer_targets(outputs, torch.tensor([11, 11]), [1, 2], 1.0)
    np.testing.assert_allclose(
        cam(x64, target_idx=11, comparison_categories=[1, 2]), GradCAM(resnet18, [layer])(x64, same), atol=1e-5
    )
    # Other targets are explained as given.
    soft = [ClassifierOutputSoftmaxTarget(c) for c in cats]
    np.testing.assert_allclose(cam(x64, soft), GradCAM(resnet18, [layer])(x64, soft), atol=1e-5)


def test_one_forward_pass_and_model_left_untouched(tiny_cnn):
    model = tiny_cnn(classes=6)
    model.train()
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    try:
        x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
        with FinerCAM(model, [model.features]) as cam:
            maps = cam(x)
    finally:
        handle.remove()
    assert len(calls) == 1  # comparison classes come from the explained forward pass itself
    assert maps.shape == (3, 16, 16) and maps.dtype == np.float32 and maps.min() >= 0 and maps.max() <= 1
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_few_classes_clamp_the_comparisons(tiny_cnn):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    # One class: nothing to compare with, so the map is Grad-CAM's.
    model = tiny_cnn(classes=1)
    np.testing.assert_allclose(FinerCAM(model, [model.features])(x), GradCAM(model, [model.features])(x), atol=1e-6)
    model = tiny_cnn(classes=2)
    ours = FinerCAM(model, [model.features])(x)
    peer = pg.FinerCAM(model, [model.features])(x)
    np.testing.assert_allclose(ours, peer, atol=1e-5)


def test_gradient_free_base_and_aug_smooth(tiny_cnn):
    model = tiny_cnn(classes=6)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        outputs = model(x)
    explicit = finer_targets(outputs, outputs.argmax(1), None, 1.0)
    got = FinerCAM(model, [model.features], base_method=ScoreCAM, batch_size=8, progress=False)(x)
    want = ScoreCAM(model, [model.features], batch_size=8, progress=False)(x, explicit)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # aug_smooth: comparisons picked once on the original image, kept for every augmented copy.
    got = FinerCAM(model, [model.features])(x, aug_smooth=True)
    want = GradCAM(model, [model.features])(x, explicit, aug_smooth=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A class-agnostic base method is still a valid (if pointless) choice.
    assert FinerCAM(model, [model.features], base_method=EigenCAM)(x).shape == (2, 16, 16)


def test_registered_exported_and_inspectable(resnet18):
    assert METHODS["finercam"] is FinerCAM and pytorch_cam.FinerCAM is FinerCAM and not FinerCAM.batched
    cam = FinerCAM(model=resnet18, target_layers=[resnet18.layer4[-1]])
    assert cam.layers == [resnet18.layer4[-1]] and cam.model is resnet18 and isinstance(cam.base_cam, GradCAM)


def test_errors(tiny_cnn):
    model = tiny_cnn()
    x = torch.randn(2, 3, 16, 16)
    cam = FinerCAM(model, [model.features])
    with pytest.raises(ValueError, match="positions in the order of closeness"):
        cam(x, comparison_categories=[-1])
    with pytest.raises(TypeError, match="wrap it in a list"):
        cam(x, comparison_categories=2)
    with pytest.raises(ValueError, match="got 1 targets for a batch of 2"):
        cam(x, [ClassifierOutputTarget(1)])
    with pytest.raises(IndexError, match="outside the model output"):
        cam(x, target_idx=99)
    with pytest.raises(TypeError, match="BaseCAM subclass"):
        FinerCAM(model, [model.features], base_method=pg.GradCAM)

    class Segmenter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    seg = Segmenter()
    with pytest.raises(ValueError, match="classes"):
        FinerCAM(seg, [seg.conv])(x)
