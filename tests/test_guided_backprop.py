"""Guided backprop: closed form on hand-built nets, the user's model left as it was, parity with grad-cam."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_cam import GuidedBackpropReLUModel


def _mlp(inplace: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 16),
        nn.ReLU(inplace=inplace),
        nn.Linear(16, 8),
        nn.ReLU(inplace=inplace),
        nn.Linear(8, 5),
    )


def _closed_form(model: nn.Sequential, x: torch.Tensor, c: int) -> np.ndarray:
    """R_in = [h > 0] [R_out > 0] R_out at each ReLU, written out for Linear-ReLU-Linear-ReLU-Linear."""
    w1, b1 = model[1].weight.detach(), model[1].bias.detach()
    w2, b2 = model[3].weight.detach(), model[3].bias.detach()
    w3 = model[5].weight.detach()
    v = x.reshape(-1)
    h1 = w1 @ v + b1
    h2 = w2 @ torch.relu(h1) + b2
    r = w3[c]
    r = (h2 > 0) * (r > 0) * r
    r = w2.T @ r
    r = (h1 > 0) * (r > 0) * r
    return (w1.T @ r).reshape(x.shape[1:]).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("inplace", [False, True])
def test_closed_form_two_relus(make_input, inplace: bool) -> None:
    model = _mlp(inplace)
    x = make_input(1, 3, 2, 2, seed=1)
    for c in range(5):
        got = GuidedBackpropReLUModel(model)(x, target_category=c)
        assert got.shape == (2, 2, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, _closed_form(model, x, c), rtol=1e-5, atol=1e-6)
    # Guidance really changes something here (otherwise this test could not tell it from plain backprop).
    xg = x.clone().requires_grad_(True)
    plain = torch.autograd.grad(model(xg)[0, 0], xg)[0][0].permute(1, 2, 0).numpy()
    assert not np.allclose(plain, GuidedBackpropReLUModel(model)(x, 0), atol=1e-6)


def test_default_target_is_top_class_and_batches(make_input) -> None:
    model = _mlp(False)
    x = make_input(3, 3, 2, 2, seed=2)
    top = model(x).argmax(dim=1).tolist()
    got = GuidedBackpropReLUModel(model)(x)
    assert got.shape == (3, 2, 2, 3)
    for i, c in enumerate(top):
        np.testing.assert_allclose(got[i], _closed_form(model, x[i : i + 1], c), rtol=1e-5, atol=1e-6)


def _model_state(model: nn.Module) -> list:
    return [
        (type(m), m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for m in model.modules()
    ]


def test_model_restored_after_call() -> None:
    model = _mlp(True)
    model.train()
    model[3].eval()  # mixed flags must come back exactly
    before = _model_state(model)
    x = torch.randn(1, 3, 2, 2)
    GuidedBackpropReLUModel(model)(x, 1)
    assert _model_state(model) == before
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad and x.grad is None


def test_model_restored_after_exception() -> None:
    model = _mlp(False)
    model.train()
    before = _model_state(model)
    with pytest.raises(IndexError, match="outside the model output, which has 5 classes"):
        GuidedBackpropReLUModel(model)(torch.randn(1, 3, 2, 2), target_category=7)
    assert _model_state(model) == before
    assert all(p.grad is None for p in model.parameters())


def test_functional_relu_is_not_guided_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(12, 16), nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.relu(self.a(x.flatten(1))))

    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(1, 3, 2, 2)
    with caplog.at_level(logging.WARNING, logger="pytorch_cam"):
        got = GuidedBackpropReLUModel(model)(x, 2)
    assert "no nn.ReLU modules" in caplog.text
    xg = x.clone().requires_grad_(True)
    plain = torch.autograd.grad(model(xg)[0, 2], xg)[0][0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-7)


def test_bad_input_messages() -> None:
    gb = GuidedBackpropReLUModel(_mlp(False))
    with pytest.raises(ValueError, match=r"Add the batch dimension with x.unsqueeze\(0\)"):
        gb(torch.randn(3, 2, 2))
    with pytest.raises(TypeError, match="floating point torch.Tensor"):
        gb(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="target_category has 1 entries but the batch has 2 images"):
        gb(torch.randn(2, 3, 2, 2), target_category=[0])


def test_parity_with_grad_cam_resnet18(private_resnet18, make_input, pearson) -> None:
    peer = pytest.importorskip("pytorch_grad_cam")
    model = private_resnet18
    x = make_input(1, 3, 64, 64, seed=0)
    ours = GuidedBackpropReLUModel(model)(x, target_category=None)
    theirs = peer.GuidedBackpropReLUModel(copy.deepcopy(model))(x.clone(), target_category=None)
    assert ours.shape == theirs.shape == (64, 64, 3)
    assert pearson(ours[None], theirs[None])[0] >= 0.99
