"""Parity with pytorch-grad-cam 1.5.7 (per-image Pearson correlation >= 0.99).

At resnet18's last block (layer4[-1], right before global average pooling and the linear
classifier) the target's gradient is constant over space, so GradCAM, XGradCAM and HiResCAM
give the same map by linearity; only an inner layer (layer3[-1]) tells the weight formulas
apart, so every method is checked at both.

EigenCAM is tested on its own: we fix the principal component's sign (flip the projection
when |min| > |max|), pytorch-grad-cam keeps whatever sign numpy's SVD returns.

A quick check closes the file: the five core methods on one 64x64 image at layer3, with the
peer's own target objects passed to both libraries.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.image import scale_cam_image as peer_scale  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as PeerTarget  # noqa: E402

import pytorch_cam  # noqa: E402
from pytorch_cam.base_cam import first_principal_component  # noqa: E402
from pytorch_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

MIN_CORR = 0.99
CLASSES = [3, 10]


@pytest.fixture(scope="module")
def model(private_resnet18):
    # A private resnet18: the peer's backward leaves .grad on the parameters, which must not
    # leak into the shared session fixture.
    return private_resnet18


@pytest.fixture(scope="module")
def x_grad(make_input):
    return make_input(2, 3, 128, 128, seed=3)  # layer4: 4x4 maps, layer3: 8x8


@pytest.fixture(scope="module")
def x_free(make_input):
    return make_input(1, 3, 64, 64, seed=4)  # keeps the 512 / 256 masked forwards to a few seconds


def ours(cls_name, model, layer, x, classes, **kwargs):
    cls = getattr(pytorch_cam, cls_name)
    if cls_name in ("ScoreCAM", "AblationCAM"):
        kwargs.setdefault("progress", False)
    with cls(model=model, target_layers=[layer], **kwargs) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])


def peer(cls_name, model, layer, x, classes, batch_size=None):
    cls = getattr(pytorch_grad_cam, cls_name)
    kwargs = {"batch_size": batch_size} if cls_name == "AblationCAM" else {}
    try:
        with cls(model=model, target_layers=[layer], **kwargs) as cam:
            if batch_size is not None:
                cam.batch_size = batch_size  # the peer's ScoreCAM reads it as an attribute
            return cam(input_tensor=x, targets=[PeerTarget(c) for c in classes])
    finally:
        model.zero_grad(set_to_none=True)


def assert_correlated(a: np.ndarray, b: np.ndarray, pearson, min_corr: float = MIN_CORR) -> np.ndarray:
    assert a.shape == b.shape
    corr = pearson(a, b)
    assert np.isfinite(corr).all(), "a map is constant: choose another input/target for this test"
    assert (corr >= min_corr).all(), corr
    return corr


def layer_of(model, where: str):
    return {"layer4": model.layer4[-1], "layer3": model.layer3[-1]}[where]


@pytest.mark.parametrize("where", ["layer4", "layer3"])
@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "XGradCAM"])
def test_gradient_methods_match_grad_cam(model, x_grad, pearson, name, where):
    layer = layer_of(model, where)
    assert_correlated(ours(name, model, layer, x_grad, CLASSES), peer(name, model, layer, x_grad, CLASSES), pearson)


@pytest.mark.parametrize("where", ["layer4", "layer3"])
@pytest.mark.parametrize("name", ["ScoreCAM", "AblationCAM"])
def test_gradient_free_methods_match_grad_cam(model, x_free, pearson, name, where):
    layer = layer_of(model, where)
    a = ours(name, model, layer, x_free, CLASSES[:1], batch_size=128)
    b = peer(name, model, layer, x_free, CLASSES[:1], batch_size=128)
    assert_correlated(a, b, pearson)


def test_last_layer_coincides_inner_layer_separates(model, x_grad, pearson):
    """Why parity at layer4 alone is not enough: there GradCAM == XGradCAM == HiResCAM."""
    last = model.layer4[-1]
    g = ours("GradCAM", model, last, x_grad, CLASSES)
    assert_correlated(g, ours("XGradCAM", model, last, x_grad, CLASSES), pearson, 0.999)
    assert_correlated(g, peer("HiResCAM", model, last, x_grad, CLASSES), pearson, 0.999)

    inner = model.layer3[-1]
    g = ours("GradCAM", model, inner, x_grad, CLASSES)
    xg = ours("XGradCAM", model, inner, x_grad, CLASSES)
    assert (pearson(g, xg) < MIN_CORR).all(), pearson(g, xg)
    # ... while each still matches its own peer (so a swapped formula would be caught).
    assert_correlated(g, peer("GradCAM", model, inner, x_grad, CLASSES), pearson)
    assert_correlated(xg, peer("XGradCAM", model, inner, x_grad, CLASSES), pearson)


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "XGradCAM"])
def test_vgg11_features_match_grad_cam(vgg11, make_input, pearson, name):
    x = make_input(2, 3, 96, 96, seed=5)
    layer = vgg11.features[-2]  # last conv's ReLU: 6x6 maps
    # Frozen classifier: the peer's backward would otherwise fill 480 MB of .grad. Gradients
    # still reach the features' activations through the trainable convolutions.
    vgg11.classifier.requires_grad_(False)
    try:
        a = ours(name, vgg11, layer, x, CLASSES)
        b = peer(name, vgg11, layer, x, CLASSES)
    finally:
        vgg11.classifier.requires_grad_(True)
        vgg11.zero_grad(set_to_none=True)
    assert_correlated(a, b, pearson)


# ---------------------------------------------------------------------------------- EigenCAM
def capture(model, layer, x) -> np.ndarray:
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["a"].numpy()


def numpy_projection(acts: np.ndarray) -> np.ndarray:
    """Projection of each image's centred (positions x channels) matrix on numpy's first PC."""
    out = []
    for a in acts:
        flat = a.reshape(a.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        vt = np.linalg.svd(flat, full_matrices=False)[2]
        out.append((flat @ vt[0]).reshape(a.shape[1:]))
    return np.float32(out)


@pytest.mark.parametrize("where", ["layer4", "layer3"])
def test_eigencam_matches_grad_cam_up_to_sign(model, x_grad, pearson, where):
    layer = layer_of(model, where)
    size = tuple(x_grad.shape[2:][::-1])  # cv2 order (W, H)
    a = ours("EigenCAM", model, layer, x_grad, CLASSES)
    b = peer("EigenCAM", model, layer, x_grad, CLASSES)
    proj = numpy_projection(capture(model, layer, x_grad))
    same = peer_scale(np.maximum(proj, 0), size)
    flipped = peer_scale(np.maximum(-proj, 0), size)
    assert_correlated(b, same, pearson, 0.999)  # our numpy replica is the peer's map
    for i in range(len(a)):
        p = proj[i]
        fixed = flipped[i] if abs(p.min()) > abs(p.max()) else same[i]
        assert pearson(a[i : i + 1], fixed[None])[0] >= 0.999
        assert max(pearson(a[i : i + 1], b[i : i + 1])[0], pearson(a[i : i + 1], flipped[i : i + 1])[0]) >= 0.999


def test_principal_component_sign_is_fixed(model, x_grad, monkeypatch):
    layer = model.layer3[-1]
    a = ours("EigenCAM", model, layer, x_grad, CLASSES)
    np.testing.assert_array_equal(a, ours("EigenCAM", model, layer, x_grad, CLASSES))  # deterministic

    acts = torch.from_numpy(capture(model, layer, x_grad))
    proj = first_principal_component(acts)
    for p in proj:
        assert p.max().abs() >= p.min().abs()  # the largest magnitude is positive
    # Negating the activations negates the component, not the (sign-fixed) projection.
    torch.testing.assert_close(first_principal_component(-acts), proj, atol=1e-4, rtol=1e-4)

    # An SVD that returns the opposite singular vectors must not change any map.
    with pytorch_cam.GradCAM(model, [layer]) as cam:
        smoothed = cam(x_grad, CLASSES, eigen_smooth=True)
    svd = torch.linalg.svd

    def opposite_svd(*args, **kwargs):
        u, s, vh = svd(*args, **kwargs)
        return -u, s, -vh

    monkeypatch.setattr(torch.linalg, "svd", opposite_svd)
    torch.testing.assert_close(first_principal_component(acts), proj)
    np.testing.assert_array_equal(ours("EigenCAM", model, layer, x_grad, CLASSES), a)
    with pytorch_cam.GradCAM(model, [layer]) as cam:
        np.testing.assert_array_equal(cam(x_grad, CLASSES, eigen_smooth=True), smoothed)


# ---------------------------------------------------------------- quick check: one image, layer3
@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "ScoreCAM", "AblationCAM"])
def test_inner_layer_parity_one_image(model, make_input, pearson, name):
    x = make_input(1, 3, 64, 64, seed=0)
    layer = model.layer3[-1]
    targets = [PeerTarget(7)]  # grad-cam's target objects work with ours too
    kwargs = {"progress": False} if name in ("ScoreCAM", "AblationCAM") else {}
    a = getattr(pytorch_cam, name)(model, [layer], **kwargs)(x, targets)
    ref = getattr(pytorch_grad_cam, name)(model, [layer])
    ref.batch_size = 256
    try:
        b = ref(x, targets)
    finally:
        model.zero_grad(set_to_none=True)
    assert a.shape == b.shape == (1, 64, 64)
    assert pearson(a, b)[0] >= 0.99
