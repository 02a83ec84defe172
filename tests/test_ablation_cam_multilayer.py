"""Multi-layer Ablation-CAM: closed forms against hand-written loops (pytorch-grad-cam 1.5.7's raises TypeError).

The brute-force references below zero channel k by hand in each model's own forward (no hooks), so
they do not share code with the implementation under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_cam import AblationCAM, MultiLayerAblationCAM
from pytorch_cam.ablation_cam_multilayer import AblationCAM as GradCamPathAlias


class TwoConvs(nn.Module):
    """Two 8-channel conv layers in sequence (the ones ablated), then pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean(dim=(2, 3)))

    def layers(self):
        return [self.a, self.b]

    def ablated(self, x, k):
        """Scores and target-layer outputs with channel k zeroed in both layers (k=None: nothing zeroed)."""
        a = self.a(x)
        if k is not None:
            a[:, k] = 0
        b = self.b(a)
        if k is not None:
            b[:, k] = 0
        return self.fc(b.mean(dim=(2, 3))), [a, b]


class TwoBranches(nn.Module):
    """Two parallel 8-channel branches (the ones ablated) summed before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Conv2d(3, 8, 3, padding=1)
        self.q = nn.Conv2d(3, 8, 5, padding=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc((torch.relu(self.p(x)) + torch.tanh(self.q(x))).mean(dim=(2, 3)))

    def layers(self):
        return [self.p, self.q]

    def ablated(self, x, k):
        p, q = self.p(x), self.q(x)
        if k is not None:
            p[:, k] = 0
            q[:, k] = 0
        return self.fc((torch.relu(p) + torch.tanh(q)).mean(dim=(2, 3))), [p, q]


class Tokens(nn.Module):
    """4x4 patches -> tokens (B, 16, 6) -> two token-wise linear layers of 6 channels -> mean -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.l1 = nn.Linear(6, 6)
        self.l2 = nn.Linear(6, 6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.fc(torch.relu(self.l2(torch.relu(self.l1(t)))).mean(dim=1))

    def layers(self):
        return [self.l1, self.l2]

    def ablated(self, x, k):
        t = self.embed(x).flatten(2).transpose(1, 2)
        h1 = self.l1(t)
        if k is not None:
            h1[..., k] = 0
        h2 = self.l2(torch.relu(h1))
        if k is not None:
            h2[..., k] = 0
        return self.fc(torch.relu(h2).mean(dim=1)), [h1, h2]


def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], 4, 4, t.shape[-1]).permute(0, 3, 1, 2)


def build(cls):
    torch.manual_seed(0)
    return cls().eval()


@pytest.fixture
def net():
    return build(TwoConvs)


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
X16 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
TARGETS = [1, 3]


def brute_force(model: nn.Module, x: torch.Tensor, targets: list, to_grid=None):
    """(B, C) weights and (B, H, W) maps by a plain loop over channels: zero k in every layer, rerun, relative drop."""
    rows = torch.arange(x.shape[0])
    with torch.no_grad():
        out, acts = model.ablated(x, None)
        y = out[rows, targets]
        channels = acts[0].shape[-1 if to_grid else 1]
        w = torch.zeros(x.shape[0], channels)
        for k in range(channels):
            w[:, k] = (y - model.ablated(x, k)[0][rows, targets]) / y
    if to_grid:
        acts = [to_grid(a) for a in acts]
    maps = [scale(torch.relu((w[:, :, None, None] * act).sum(1))) for act in acts]
    maps = [nn.functional.interpolate(m[:, None], size=x.shape[2:], mode="bilinear")[:, 0] for m in maps]
    return w, scale(torch.stack(maps).mean(0)).numpy()


def scale(cam: torch.Tensor) -> torch.Tensor:
    """Min-max per image; a constant map becomes zeros."""
    lo, hi = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    return torch.where(hi > lo, (cam - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)


class Recording(MultiLayerAblationCAM):
    """Keeps the weights every layer received and counts how often they were computed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen = []
        self.computed = 0

    def ablation_weights(self, call):
        self.computed += 1
        return super().ablation_weights(call)

    def layer_weights(self, ctx):
        w = super().layer_weights(ctx)
        self.seen.append(w)
        return w


@pytest.mark.parametrize(
    "cls, x, to_grid",
    [(TwoConvs, X, None), (TwoBranches, X, None), (Tokens, X16, tokens_to_grid)],
    ids=["sequence", "branches", "tokens-channels-last"],
)
def test_weights_and_maps_match_the_brute_force_loop(cls, x, to_grid):
    model = build(cls)
    cam = Recording(model, model.layers(), reshape_transform=to_grid, batch_size=3, progress=False)
    got = cam(x, TARGETS)
    want_w, want_map = brute_force(model, x, TARGETS, to_grid)
    assert cam.computed == 1 and len(cam.seen) == 2 and cam.seen[0] is cam.seen[1]
    torch.testing.assert_close(cam.seen[0], want_w, rtol=1e-5, atol=1e-6)
    assert not torch.equal(want_w, torch.zeros_like(want_w))  # the check above is not vacuous
    np.testing.assert_allclose(got, want_map, atol=1e-5)


def test_chunking_does_not_change_the_map(net):
    maps = [MultiLayerAblationCAM(net, [net.a, net.b], batch_size=bs, progress=False)(X, TARGETS) for bs in (1, 7, 64)]
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-6)
    np.testing.assert_allclose(maps[0], maps[2], atol=1e-6)


@pytest.mark.parametrize("layer", ["a", "b"])
def test_one_layer_is_ablation_cam(net, layer):
    target = [getattr(net, layer)]
    single = MultiLayerAblationCAM(net, target, progress=False)(X, TARGETS)
    np.testing.assert_allclose(single, AblationCAM(net, target, progress=False)(X, TARGETS), atol=1e-5)


def test_one_token_layer_is_ablation_cam():
    model = build(Tokens)
    kwargs = dict(reshape_transform=tokens_to_grid, batch_size=4, progress=False)
    ours = MultiLayerAblationCAM(model, [model.l1], **kwargs)(X16, TARGETS)
    np.testing.assert_allclose(ours, AblationCAM(model, [model.l1], **kwargs)(X16, TARGETS), atol=1e-5)


def test_layers_of_different_widths_are_named(tiny_cnn):
    model = tiny_cnn()  # conv1: 8 channels, features: 16
    cam = MultiLayerAblationCAM(model, [model.conv1, model.features], progress=False)
    with pytest.raises(
        ValueError, match=r"same number of channels; got 'conv1' \(Conv2d\): 8, 'features' \(Conv2d\): 16"
    ):
        cam(torch.randn(1, 3, 8, 8), [1])
    assert not any(m._forward_hooks for m in model.modules())


def test_model_is_untouched_and_the_grad_cam_module_path_works(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    MultiLayerAblationCAM(net, [net.a, net.b], progress=False)(X, TARGETS)
    assert net.training and all(m.training for m in net.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert GradCamPathAlias is MultiLayerAblationCAM
    assert AblationCAM is not MultiLayerAblationCAM  # the top-level name stays the single-layer method


class FailsOnAblatedPasses(TwoConvs):
    """Runs the capture pass, then raises in the middle of the first ablated pass (after layer a's hook ran)."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        a = self.a(x)
        if self.calls > 1:
            raise RuntimeError("boom")
        return self.fc(self.b(a).mean(dim=(2, 3)))


def test_hooks_are_removed_when_an_ablated_pass_fails():
    model = build(FailsOnAblatedPasses)
    with pytest.raises(RuntimeError, match="boom"):
        MultiLayerAblationCAM(model, [model.a, model.b], batch_size=2, progress=False)(X, TARGETS)
    assert model.calls == 2
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_ratio_ablates_the_top_channels_of_the_first_layer(net):
    cam = Recording(net, [net.a, net.b], ratio_channels_to_ablate=0.25, progress=False)
    cam(X, TARGETS)
    full_w, _ = brute_force(net, X, TARGETS)
    with torch.no_grad():
        top = net.a(X).flatten(2).amax(-1).topk(2, dim=1).indices
    keep = torch.zeros(2, 8, dtype=torch.bool).scatter_(1, top, True)
    torch.testing.assert_close(cam.seen[0], torch.where(keep, full_w, 0.0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="ratio_channels_to_ablate must be in"):
        MultiLayerAblationCAM(net, [net.a], ratio_channels_to_ablate=0)


def test_resnet_two_blocks_of_the_same_width(resnet18):
    """layer4[0] and layer4[-1] (512 channels each): weights equal a hand-written forward of the tail."""
    m = resnet18
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    targets = [1, 2]
    cam = Recording(m, [m.layer4[0], m.layer4[-1]], progress=False)
    maps = cam(x, targets)
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps.min() == 0.0 and maps.max() == 1.0

    rows = torch.arange(2)
    with torch.no_grad():
        f = m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))))
        a = m.layer4[0](f)
        y = m.fc(m.avgpool(m.layer4[1](a)).flatten(1))[rows, targets]
        # All 512 ablations of both images at once: row (k, b) zeroes channel k of image b in both blocks.
        eye = 1.0 - torch.eye(512)[:, None, :, None, None]  # (512, 1, 512, 1, 1)
        a_k = (a[None] * eye).flatten(0, 1)
        b_k = m.layer4[1](a_k).unflatten(0, (512, 2)) * eye
        y_k = m.fc(b_k.mean(dim=(3, 4)))[:, rows, targets].T  # (2, 512)
    torch.testing.assert_close(cam.seen[0], (y[:, None] - y_k) / y[:, None], rtol=1e-4, atol=1e-5)
