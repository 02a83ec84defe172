"""Multi-layer Ablation-CAM: closed form against a brute-force loop (pytorch-grad-cam 1.5.7's raises TypeError)."""

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


@pytest.fixture
def net():
    torch.manual_seed(0)
    return TwoConvs().eval()


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
TARGETS = [1, 3]


def brute_force(net: TwoConvs, x: torch.Tensor, targets: list) -> np.ndarray:
    """Weights, then maps, with a plain loop: zero channel k in both layers, rerun, relative drop."""
    with torch.no_grad():
        acts = [net.a(x)]
        acts.append(net.b(acts[0]))
        y = net(x)[torch.arange(2), targets]
        w = torch.zeros(2, 8)
        for k in range(8):
            a = acts[0].clone()
            a[:, k] = 0
            bb = net.b(a)
            bb[:, k] = 0
            yk = net.fc(bb.mean(dim=(2, 3)))[torch.arange(2), targets]
            w[:, k] = (y - yk) / y
    maps = [scale(torch.relu((w[:, :, None, None] * act).sum(1))) for act in acts]
    return scale(torch.stack(maps).mean(0)).numpy()


def scale(cam: torch.Tensor) -> torch.Tensor:
    """Min-max per image; a constant map becomes zeros."""
    lo, hi = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    return torch.where(hi > lo, (cam - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)


def test_weights_and_maps_match_the_brute_force_loop(net):
    got = MultiLayerAblationCAM(net, [net.a, net.b], batch_size=3, progress=False)(X, TARGETS)
    np.testing.assert_allclose(got, brute_force(net, X, TARGETS), atol=1e-5)


def test_chunking_does_not_change_the_map(net):
    maps = [MultiLayerAblationCAM(net, [net.a, net.b], batch_size=bs, progress=False)(X, TARGETS) for bs in (1, 7, 64)]
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-6)
    np.testing.assert_allclose(maps[0], maps[2], atol=1e-6)


def test_one_layer_is_ablation_cam(net):
    single = MultiLayerAblationCAM(net, [net.b], progress=False)(X, TARGETS)
    np.testing.assert_allclose(single, AblationCAM(net, [net.b], progress=False)(X, TARGETS), atol=1e-5)


def test_layers_of_different_widths_are_named(tiny_cnn):
    model = tiny_cnn()  # conv1: 8 channels, features: 16
    cam = MultiLayerAblationCAM(model, [model.conv1, model.features], progress=False)
    with pytest.raises(
        ValueError, match=r"same number of channels; got 'conv1' \(Conv2d\): 8, 'features' \(Conv2d\): 16"
    ):
        cam(torch.randn(1, 3, 8, 8), [1])


def test_model_is_untouched_and_the_grad_cam_module_path_works(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    MultiLayerAblationCAM(net, [net.a, net.b], progress=False)(X, TARGETS)
    assert net.training and all(m.training for m in net.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert GradCamPathAlias is MultiLayerAblationCAM


def test_ratio_ablates_the_top_channels_of_the_first_layer(net):
    cam = MultiLayerAblationCAM(net, [net.a, net.b], ratio_channels_to_ablate=0.25, progress=False)
    seen = {}
    original = cam.ablation_weights

    def spy(call):
        seen["w"] = original(call)
        return seen["w"]

    cam.ablation_weights = spy
    cam(X, TARGETS)
    with torch.no_grad():
        top = net.a(X).flatten(2).amax(-1).topk(2, dim=1).indices
    for i in range(2):
        nonzero = set(seen["w"][i].nonzero().flatten().tolist())
        assert nonzero <= set(top[i].tolist())
    with pytest.raises(ValueError, match="ratio_channels_to_ablate must be in"):
        MultiLayerAblationCAM(net, [net.a], ratio_channels_to_ablate=0)


def test_resnet_two_blocks_of_the_same_width(resnet18):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    maps = MultiLayerAblationCAM(resnet18, [resnet18.layer4[0], resnet18.layer4[-1]], progress=False)(x, [1, 2])
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps.min() == 0.0 and maps.max() == 1.0
