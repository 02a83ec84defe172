"""SESS: parity with pytorch-grad-cam 1.5.7, its building blocks against OpenCV, properties, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import pytorch_cam
from pytorch_cam import EigenCAM, GradCAM, ScoreCAM
from pytorch_cam.base_cam import min_max_scale
from pytorch_cam.methods import BATCHED, METHODS
from pytorch_cam.sess import SESS, _Plan, gaussian_blur, window_starts
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

pg = pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def x6480():
    return torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))


def assert_parity(pearson, ours, peer):
    """Per-image correlation >= 0.99; a map that is constant must be so in both."""
    r = pearson(ours, peer)
    flat = np.isnan(r)
    np.testing.assert_allclose(ours[flat], peer[flat], atol=1e-5)
    assert (~flat).any() and r[~flat].min() >= 0.99, r


# A window of 64 for the last layers (2x2 maps); 32 with a downscaled first scale for inner layers.
CASES = {
    "resnet-layer4": ("resnet18", lambda m: m.layer4[-1], {"window_size": 64, "num_scales": 2}),
    "resnet-layer3": ("resnet18", lambda m: m.layer3[-1], {"window_size": 32, "num_scales": 3}),
    "vgg-last": ("vgg11", lambda m: m.features[-1], {"window_size": 64, "num_scales": 2}),
    "vgg-inner": ("vgg11", lambda m: m.features[14], {"window_size": 32, "num_scales": 2}),
}


# ---------------------------------------------------------------- parity with pytorch-grad-cam
@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_pytorch_grad_cam(request, pearson, x6480, case):
    arch, layer_of, kw = CASES[case]
    model = request.getfixturevalue(arch)
    layer = layer_of(model)
    ours = SESS(model, [layer], progress=False, batch_size=5, **kw)(x6480)
    peer = pg.SESS(model, [layer], **kw)(x6480)
    assert_parity(pearson, ours, peer)


OPTIONS = {
    "max-overlapping": {"window_size": 32, "num_scales": 2, "step_size": 20, "pool": "max"},
    "prefilter-theta-raw": {
        "window_size": 32,
        "scales": [32, 40],
        "pre_filter_ratio": 0.5,
        "theta": 0.2,
        "use_softmax_scores": False,
        "smooth": False,
    },
    "targets-step-ratio": {"window_size": 32, "num_scales": 2, "scale_step_ratio": 0.5},
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_parity_of_the_options(resnet18, pearson, x6480, name):
    kw = OPTIONS[name]
    layer = resnet18.layer3[-1]
    targets = [ClassifierOutputTarget(5), ClassifierOutputTarget(700)] if name == "targets-step-ratio" else None
    ours = SESS(resnet18, [layer], progress=False, **kw)(x6480, targets)
    peer = pg.SESS(resnet18, [layer], **kw)(x6480, targets)
    assert_parity(pearson, ours, peer)


def test_gradient_free_base_method(resnet18, pearson, x6480):
    layer = resnet18.layer3[-1]
    kw = {"window_size": 32, "num_scales": 2}
    ours = SESS(resnet18, [layer], base_method=EigenCAM, progress=False, **kw)(x6480)
    peer = pg.SESS(resnet18, [layer], base_method=pg.EigenCAM, **kw)(x6480)
    assert_parity(pearson, ours, peer)


# ---------------------------------------------------------------- building blocks against OpenCV
@pytest.mark.parametrize("shape", [(64, 48), (7, 5), (3, 12), (1, 9)])
def test_gaussian_blur_is_opencvs(shape):
    maps = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    expected = np.stack([cv2.GaussianBlur(m, (11, 11), 5.0, 0) for m in maps.numpy()])
    np.testing.assert_allclose(gaussian_blur(maps).numpy(), expected, atol=1e-6)


def test_pasting_back_is_a_zero_canvas_resized_with_opencv():
    height, width = 30, 45
    plan = _Plan(height, width, [30, 41, 67], 24, 10, torch.device("cpu"))
    p = torch.arange(len(plan))
    cams = torch.rand(len(plan), 24, 24, generator=torch.Generator().manual_seed(0))
    got = SESS._paste(cams, p, plan).numpy()
    for i in range(len(plan)):
        sh, sw = plan.sizes[int(plan.scale_of[i])]
        y, x = int(plan.y[i]), int(plan.x[i])
        canvas = np.zeros((sh, sw), np.float32)
        canvas[y : y + 24, x : x + 24] = cams[i].numpy()
        np.testing.assert_allclose(got[i], cv2.resize(canvas, (width, height)), atol=1e-5)
    # Shorter side to the scale, aspect ratio kept as torchvision does (int of the long side).
    assert plan.sizes == [(30, 45), (41, 61), (67, 100)]


def test_window_starts():
    assert window_starts(64, 64, 64) == [0]
    assert window_starts(80, 64, 64) == [0, 16]  # the last window is shifted back inside
    assert window_starts(100, 30, 40) == [0, 30, 60]
    assert window_starts(150, 100, 32) == [0, 100]  # a stride past the window leaves gaps, as in grad-cam


# ---------------------------------------------------------------- properties
def test_one_patch_is_the_base_method(tiny_cnn):
    model = tiny_cnn()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    base = torch.from_numpy(GradCAM(model, [model.features])(x))
    for pool in ("mean", "max"):
        sess = SESS(model, [model.features], scales=[16], pool=pool, smooth=False, progress=False)
        np.testing.assert_allclose(sess(x), base.numpy(), atol=1e-6)
    smooth = SESS(model, [model.features], scales=[16], progress=False)(x)
    np.testing.assert_allclose(smooth, min_max_scale(gaussian_blur(base)).numpy(), atol=1e-6)


def test_batching_does_not_change_the_maps(tiny_cnn):
    model = tiny_cnn()
    x = torch.randn(3, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    kw = {"window_size": 12, "num_scales": 3, "step_size": 5, "progress": False}
    one = SESS(model, [model.features], batch_size=1, **kw)(x)
    many = SESS(model, [model.features], batch_size=64, **kw)(x)
    np.testing.assert_allclose(one, many, atol=1e-5)
    alone = np.concatenate([SESS(model, [model.features], batch_size=7, **kw)(x[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(many, alone, atol=1e-5)


def test_pool_theta_and_pre_filter(tiny_cnn):
    model = tiny_cnn()
    x = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(4))
    kw = {"window_size": 12, "num_scales": 3, "step_size": 5, "progress": False, "smooth": False}
    mean = SESS(model, [model.features], **kw)(x)
    assert not np.allclose(mean, SESS(model, [model.features], pool="max", **kw)(x), atol=1e-3)
    # No weighted patch value exceeds 1, so theta=1 leaves nothing to average: all zeros.
    assert not SESS(model, [model.features], theta=1.0, **kw)(x).any()

    explained = []

    class Spy(GradCAM):
        def forward_tensor(self, patches, targets, eigen_smooth):
            explained.append(patches.clone())
            return super().forward_tensor(patches, targets, eigen_smooth)

    sess = SESS(model, [model.features], base_method=Spy, pre_filter_ratio=0.4, batch_size=1000, **kw)
    filtered = sess(x)
    plan = _Plan(20, 24, sess.get_scales(12), 12, 5, x.device)
    total = len(plan)
    assert explained[0].shape[0] == 2 * (total - int(total * 0.4))
    assert not np.allclose(filtered, mean, atol=1e-3)
    # The kept patches are each image's best scoring ones.
    with torch.no_grad():
        top = model(x).argmax(1)
        scores = sess._score_patches(x, plan, [ClassifierOutputTarget(int(c)) for c in top])
    kept = sess._keep(scores)
    dropped_best = torch.where(kept, -1.0, scores).amax(1)
    kept_worst = torch.where(kept, scores, 2.0).amin(1)
    assert (dropped_best <= kept_worst).all() and (kept.sum(1) == total - int(total * 0.4)).all()


def test_cli_construction_registration_and_clean_model(tiny_cnn):
    assert METHODS["sess"] is SESS and pytorch_cam.SESS is SESS and SESS.batched and "sess" in BATCHED
    model = tiny_cnn()
    model.train()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with SESS(model=model, target_layers=[model.features], batch_size=4) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(2)], aug_smooth=False, eigen_smooth=False)
        assert cam.layers == [model.features] and cam.model is model
    assert maps.shape == (1, 16, 16) and maps.dtype == np.float32 and maps.min() >= 0 and maps.max() == 1
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    # The base method's per-batch progress bars are off; eigen/aug smoothing go to it.
    sess = SESS(model, [model.features], base_method=ScoreCAM, scales=[16, 20], progress=False)
    assert sess.base_cam.progress is False
    assert sess(x, [2], eigen_smooth=True, aug_smooth=True).shape == (1, 16, 16)


def test_errors(tiny_cnn):
    model = tiny_cnn()
    layers = [model.features]
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="pool must be 'mean' or 'max'"):
        SESS(model, layers, pool="median")
    with pytest.raises(ValueError, match="pre_filter_ratio must be in"):
        SESS(model, layers, pre_filter_ratio=1.0)
    with pytest.raises(ValueError, match="at least the window size 12"):
        SESS(model, layers, window_size=12, scales=[10, 14])
    with pytest.raises(ValueError, match="at least the window size 16"):
        SESS(model, layers, scales=[8], progress=False)(x)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        SESS(model, layers, batch_size=0)
    with pytest.raises(TypeError, match="BaseCAM subclass"):
        SESS(model, layers, base_method=pg.GradCAM)
    with pytest.raises(ValueError, match="got 1 targets for a batch of 2"):
        SESS(model, layers, scales=[16], progress=False)(x, [1])
    with pytest.raises(ValueError, match="2-D images"):
        SESS(model, layers, progress=False)(torch.randn(1, 3, 4, 16, 16))
