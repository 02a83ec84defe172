"""Maps of a hand-built linear model, compared with formulas written out by hand.

Model: x (B, I, H, W) -> 1x1 conv 'features' (weights U (C, I), bias c) -> global average pool
-> linear (weights V (K, C), bias d). So A_c = sum_i U[c, i] x_i + c_c, the class-k score is
y_k = d_k + sum_c V[k, c] mean(A_c), and dy_k / dA_c[i, j] = V[k, c] / (H W) everywhere.
The features keep the input's size, so no resizing is involved.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

B, IN, C, K, H, W = 2, 3, 5, 3, 6, 7
CLASSES = [0, 2]


class LinearNet(nn.Module):
    def __init__(self, u: np.ndarray, c: np.ndarray, v: np.ndarray, d: np.ndarray) -> None:
        super().__init__()
        self.features = nn.Conv2d(u.shape[1], u.shape[0], 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(v.shape[1], v.shape[0])
        with torch.no_grad():
            self.features.weight.copy_(torch.from_numpy(u)[:, :, None, None])
            self.features.bias.copy_(torch.from_numpy(c))
            self.fc.weight.copy_(torch.from_numpy(v))
            self.fc.bias.copy_(torch.from_numpy(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    u = rng.uniform(0.2, 1.0, (C, IN)).astype(np.float32)
    c = rng.uniform(0.0, 0.3, C).astype(np.float32)
    # Mixed signs, so the weighted sum has structure after the ReLU (not all zeros).
    v = np.float32([[1.0, -0.5, 0.8, -0.3, 0.6], [0.2, 0.1, -0.9, 0.4, 0.3], [-0.4, 0.9, 0.7, -0.8, 0.5]])
    d = np.float32([0.5, -0.2, 2.0])
    x = rng.uniform(0.0, 1.0, (B, IN, H, W)).astype(np.float32)
    model = LinearNet(u, c, v, d).eval()
    acts = np.einsum("ci,bihw->bchw", u.astype(np.float64), x) + c[None, :, None, None]
    vk = v[CLASSES].astype(np.float64)  # (B, C): weights of each image's target class
    y = d[CLASSES] + (vk * acts.mean(axis=(2, 3))).sum(axis=1)
    return dict(model=model, x=torch.from_numpy(x), xn=x.astype(np.float64), u=u, c=c, v=v, d=d, acts=acts, vk=vk, y=y)


def minmax(m: np.ndarray) -> np.ndarray:
    lo = m.min(axis=(1, 2), keepdims=True)
    rng = m.max(axis=(1, 2), keepdims=True) - lo
    return np.where(rng > 0, (m - lo) / np.where(rng > 0, rng, 1), 0.0)


def run(cam, x):
    """The final map and the channel weights the method computed (spied on the instance)."""
    seen = {}
    original = cam.layer_weights

    def spy(*args, **kwargs):
        seen["weights"] = original(*args, **kwargs)
        return seen["weights"]

    cam.layer_weights = spy
    with cam:
        maps = cam(x, targets=[ClassifierOutputTarget(k) for k in CLASSES])
    return maps, seen.get("weights")


def expected_map(weights: np.ndarray, acts: np.ndarray) -> np.ndarray:
    raw = np.maximum((weights[:, :, None, None] * acts).sum(axis=1), 0)
    assert (raw.max(axis=(1, 2)) > raw.min(axis=(1, 2))).all(), "degenerate fixture: constant map"
    return minmax(raw)


def check(cam, s, weights):
    maps, got = run(cam, s["x"])
    np.testing.assert_allclose(got.numpy(), weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(maps, expected_map(weights, s["acts"]), atol=1e-5)


def test_gradcam(setup):
    s = setup
    check(GradCAM(s["model"], [s["model"].features]), s, s["vk"] / (H * W))


def test_xgradcam(setup):
    s = setup
    # sum_ij (A / sum A) * V / (HW) = V / (HW): equal to Grad-CAM for this linear head.
    total = s["acts"].sum(axis=(2, 3))
    check(XGradCAM(s["model"], [s["model"].features]), s, s["vk"] / (H * W) * total / (total + 1e-7))


def test_gradcam_plusplus(setup):
    s = setup
    g = s["vk"] / (H * W)
    total = s["acts"].sum(axis=(2, 3))
    alpha = g**2 / (2 * g**2 + total * g**3 + 1e-6)
    check(GradCAMPlusPlus(s["model"], [s["model"].features]), s, H * W * alpha * np.maximum(g, 0))


def test_scorecam(setup):
    s = setup
    acts, xn, u, c, d = s["acts"], s["xn"], s["u"], s["c"], s["d"]
    lo = acts.min(axis=(2, 3), keepdims=True)
    masks = (acts - lo) / (acts.max(axis=(2, 3), keepdims=True) - lo)  # (B, C, H, W)
    masked = xn[:, None] * masks[:, :, None]  # (B, C masks, I, H, W)
    masked_acts = np.einsum("ei,bcihw->bcehw", u, masked) + c[None, None, :, None, None]
    scores = d[CLASSES][:, None] + np.einsum("be,bce->bc", s["vk"], masked_acts.mean(axis=(3, 4)))
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    check(ScoreCAM(s["model"], [s["model"].features], progress=False), s, weights)


def test_ablationcam(setup):
    s = setup
    # Zeroing channel c removes V[k, c] * mean(A_c) from the score: relative drop over y.
    drop = s["vk"] * s["acts"].mean(axis=(2, 3))
    check(AblationCAM(s["model"], [s["model"].features], progress=False), s, drop / s["y"][:, None])


def test_ablationcam_batch_size_does_not_change_weights(setup):
    s = setup
    maps1, w1 = run(AblationCAM(s["model"], [s["model"].features], batch_size=1, progress=False), s["x"])
    maps7, w7 = run(AblationCAM(s["model"], [s["model"].features], batch_size=7, progress=False), s["x"])
    torch.testing.assert_close(w1, w7)
    np.testing.assert_allclose(maps1, maps7, atol=1e-6)


def test_eigencam_rank_one():
    # One input channel and no bias: A_c = U_c x, a rank-one activation tensor whose first
    # principal component projects every position onto +-|U| (x - mean x).
    rng = np.random.default_rng(1)
    u = rng.uniform(0.2, 1.0, (C, 1)).astype(np.float32)
    model = LinearNet(u, np.zeros(C, np.float32), rng.normal(size=(K, C)).astype(np.float32), np.zeros(K, np.float32))
    x = rng.uniform(0, 1, (B, 1, H, W)).astype(np.float32)
    x[0, 0, 0, 0] = 3.0  # image 0: a large positive outlier, so the fixed sign keeps +(x - mean)
    x[1, 0, 0, 0] = -3.0  # image 1: a large negative one, so the fixed sign flips to -(x - mean)
    centred = x[:, 0] - x[:, 0].mean(axis=(1, 2), keepdims=True)
    signs = np.float32([1, -1])[:, None, None]
    with EigenCAM(model, [model.features]) as cam:
        maps = cam(torch.from_numpy(x))
    np.testing.assert_allclose(maps, minmax(np.maximum(signs * centred, 0)), atol=1e-5)
