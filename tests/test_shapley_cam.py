"""ShapleyCAM: closed forms (H·A by hand and with torch.func), Grad-CAM when the Hessian vanishes,
parity with pytorch-grad-cam 1.5.7, no gradients or graph left behind, errors."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import pytorch_cam as pc
from pytorch_cam.base_cam import min_max_scale, resize_maps
from pytorch_cam.methods import METHODS
from pytorch_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget

CLASSES = [3, 7]


def expected_map(acts: torch.Tensor, weights: torch.Tensor, size) -> np.ndarray:
    """Our pipeline on given (B, C) weights: ReLU, min-max, resize, min-max."""
    cam = torch.relu((weights[:, :, None, None] * acts).sum(dim=1))
    return min_max_scale(resize_maps(min_max_scale(cam), size)).numpy()


class QuadraticHead(nn.Module):
    """conv (target) -> global mean m -> y = W m + (Q m)^2, element-wise square per class."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.w = nn.Linear(6, 4, bias=False)
        self.q = nn.Linear(6, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.conv(x).mean(dim=(2, 3))
        return self.w(m) + self.q(m) ** 2


class CurvedHead(nn.Module):
    """conv (target) -> softplus -> global mean -> linear: curved in every activation entry."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(F.softplus(a).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


def build(cls) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


@pytest.fixture
def x_small() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 10, 10)


def test_quadratic_head_closed_form(x_small):
    # y_k = w_k.m + (q_k.m)^2 with m the mean of A over its P positions:
    # dy/dA = (w_k + 2 (q_k.m) q_k) / P and H·A = 2 (q_k.m) q_k / P, so the weights are
    # (w_k + (q_k.m) q_k) / P, while Grad-CAM's are (w_k + 2 (q_k.m) q_k) / P.
    model = build(QuadraticHead)
    classes = [1, 2]
    with torch.no_grad():
        acts = model.conv(x_small)
        m = acts.mean(dim=(2, 3))
        w = model.w.weight[classes]
        q = model.q.weight[classes]
        qm = (q * m).sum(dim=1, keepdim=True)
        p = acts.shape[2] * acts.shape[3]
    size = x_small.shape[2:]
    ours = pc.ShapleyCAM(model, [model.conv])(x_small, classes)
    np.testing.assert_allclose(ours, expected_map(acts, (w + qm * q) / p, size), atol=1e-5)
    grad_cam = expected_map(acts, (w + 2 * qm * q) / p, size)
    np.testing.assert_allclose(pc.GradCAM(model, [model.conv])(x_small, classes), grad_cam, atol=1e-5)
    assert np.abs(ours - grad_cam).max() > 0.05  # the Hessian term is visible


def test_hessian_vector_product_matches_torch_func(x_small):
    # A head that is curved position by position, and the paper's ReST score (log-softmax):
    # g and H·A from torch.func, independently of the CAM's autograd plumbing.
    model = build(CurvedHead)
    targets = [ClassifierOutputReST(c) for c in (0, 3)]
    with torch.no_grad():
        acts = model.conv(x_small)

    def score(a: torch.Tensor) -> torch.Tensor:
        out = model.head(a)
        return sum(t(o) for t, o in zip(targets, out))

    g = torch.func.grad(score)(acts)
    _, hvp = torch.func.jvp(torch.func.grad(score), (acts,), (acts,))
    assert hvp.abs().max() > 1e-3 * g.abs().max()
    weights = (g - 0.5 * hvp).mean(dim=(2, 3))
    ours = pc.ShapleyCAM(model, [model.conv])(x_small, targets)
    np.testing.assert_allclose(ours, expected_map(acts, weights.detach(), x_small.shape[2:]), atol=1e-5)
    plain = expected_map(acts, g.mean(dim=(2, 3)).detach(), x_small.shape[2:])
    assert np.abs(ours - plain).max() > 1e-2


@pytest.mark.parametrize("layer", ["features", "relu2"])
def test_piecewise_linear_tail_equals_grad_cam(tiny_cnn, layer):
    # ReLU -> average pool -> linear and a logit target: the Hessian is zero, ShapleyCAM is Grad-CAM.
    model = tiny_cnn()
    torch.manual_seed(2)
    x = torch.randn(2, 3, 16, 16)
    target_layer = getattr(model, layer)
    ours = pc.ShapleyCAM(model, [target_layer])(x, [1, 4])
    np.testing.assert_allclose(ours, pc.GradCAM(model, [target_layer])(x, [1, 4]), atol=1e-6)


def test_frozen_model(tiny_cnn):
    # Weights without requires_grad: the gradient of a linear tail does not depend on anything
    # that requires grad, so there is no Hessian term to compute (and no error); with the ReST
    # score the softmax still gives one.
    model = tiny_cnn().requires_grad_(False)
    torch.manual_seed(2)
    x = torch.randn(2, 3, 16, 16)
    ours = pc.ShapleyCAM(model, [model.features])(x, [ClassifierOutputTarget(1), ClassifierOutputTarget(4)])
    np.testing.assert_allclose(ours, pc.GradCAM(model, [model.features])(x, [1, 4]), atol=1e-6)
    rest = [ClassifierOutputReST(1), ClassifierOutputReST(4)]
    assert np.isfinite(pc.ShapleyCAM(model, [model.features])(x, rest)).all()
    assert not any(p.requires_grad for p in model.parameters())


def grad_cam_peer(model, layer, x):
    from pytorch_grad_cam import ShapleyCAM as PeerShapleyCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST as PeerReST

    with PeerShapleyCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[PeerReST(c) for c in CLASSES])


@pytest.mark.parametrize(
    "arch, path",
    [("resnet18", "layer4.1"), ("resnet18", "layer3.1"), ("vgg11", "features.19"), ("vgg11", "features.14")],
)
def test_parity_with_grad_cam(request, pearson, arch, path):
    pytest.importorskip("pytorch_grad_cam")
    model = request.getfixturevalue(arch)
    layer = model.get_submodule(path)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    targets = [ClassifierOutputReST(c) for c in CLASSES]
    ours = pc.ShapleyCAM(model, [layer])(x, targets)
    theirs = grad_cam_peer(model, layer, x)
    assert pearson(ours, theirs).min() >= 0.99
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    # The Hessian part on its own: both differ from Grad-CAM in the same way.
    grad_cam = pc.GradCAM(model, [layer])(x, targets)
    assert np.abs(theirs - grad_cam).max() > 1e-3
    assert pearson(ours - grad_cam, theirs - grad_cam).min() >= 0.99


def test_each_layer_of_several_gets_its_own_product(resnet18):
    # The products of two layers share the graph: the first must not free it for the second.
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    targets = [ClassifierOutputReST(c) for c in CLASSES]
    layers = [resnet18.layer3[-1], resnet18.layer4[-1]]
    both = pc.ShapleyCAM(resnet18, layers)
    call = both.capture_pass(x, targets)
    maps = [both.layer_cam(both.layer_context(call, i), False) for i in range(2)]
    for i, layer in enumerate(layers):
        single = pc.ShapleyCAM(resnet18, [layer])
        ref = single.layer_cam(single.layer_context(single.capture_pass(x, targets), 0), False)
        torch.testing.assert_close(maps[i], ref, rtol=1e-4, atol=1e-6)
    assert pc.ShapleyCAM(resnet18, layers)(x, targets).shape == (2, 64, 64)


def test_leaves_no_gradients_and_no_graph(tiny_cnn):
    model = tiny_cnn()
    flags = [p.requires_grad for p in model.parameters()]
    refs = []

    def keep(module, inputs, output):
        # fc's input is saved by its backward: it lives as long as the graph does.
        refs.append(weakref.ref(inputs[0]))
        refs.append(weakref.ref(output))

    handle = model.fc.register_forward_hook(keep)
    try:
        cam = pc.ShapleyCAM(model, [model.features])
        torch.manual_seed(2)
        out = cam(torch.randn(2, 3, 16, 16), [ClassifierOutputReST(1), ClassifierOutputReST(4)])
    finally:
        handle.remove()
    assert out.dtype == np.float32 and out.shape == (2, 16, 16)
    assert refs and all(r() is None for r in refs)  # freed without gc: no cycle, nothing kept
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.fc._forward_hooks and not model.features._forward_hooks


def test_registered_and_errors(tiny_cnn):
    assert METHODS["shapleycam"] is pc.ShapleyCAM
    assert pc.ShapleyCAM.create_graph and pc.ShapleyCAM.uses_gradients
    model = tiny_cnn()
    with pytest.raises(ValueError, match="uses_gradients"):
        pc.ShapleyCAM(model, [model.features], uses_gradients=False)
    with pytest.raises(ValueError, match="target_layers is empty"):
        pc.ShapleyCAM(model, [])


def test_fused_attention_without_a_second_derivative_gets_a_clear_error():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    layer = vit.encoder.layers[0].ln_1
    targets = [ClassifierOutputReST(1)] * 2
    with pytest.raises(RuntimeError, match=r"needs second derivatives.*SDPBackend.MATH"):
        pc.ShapleyCAM(vit, [layer])(x, targets)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        assert pc.ShapleyCAM(vit, [layer])(x, targets).shape == (2, 32, 32)
