"""A CAM must leave the user's model exactly as it found it: no hooks, no .grad, same flags,
same parameters and buffers - after normal use, after exceptions and after the CAM is deleted.
"""

from __future__ import annotations

import gc
import os
import warnings
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

ALL = [GradCAM, GradCAMPlusPlus, XGradCAM, EigenCAM, ScoreCAM, AblationCAM]
IDS = [c.__name__ for c in ALL]
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class NormNet(nn.Module):
    """Has BatchNorm and Dropout, whose behaviour (and running stats) depend on the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, stride=2), nn.BatchNorm2d(12), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(self.stem(x)).mean(dim=(2, 3))))


def make_net(mode: str) -> NormNet:
    torch.manual_seed(0)
    net = NormNet()
    with torch.no_grad():  # non-trivial running stats, so an update would show
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    if mode == "eval":
        net.eval()
    elif mode == "train":
        net.train()
    elif mode == "mixed":
        net.train()
        net.stem.requires_grad_(False)  # a frozen trunk ...
        net.features[1].eval()  # ... and a submodule the user put in eval mode
        net.fc.bias.requires_grad_(False)
    return net


def snapshot(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    for name, m in model.named_modules():
        for attr in HOOK_DICTS:
            assert len(getattr(m, attr)) == 0, f"{attr} left on {name or 'model'}"
    assert all(p.grad is None for p in model.parameters()), ".grad left on a parameter"
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"


def make_cam(cls, model):
    kwargs = {"progress": False, "batch_size": 5} if cls in (ScoreCAM, AblationCAM) else {}
    return cls(model, [model.features], **kwargs)


@pytest.fixture(scope="module")
def x(make_input):
    return make_input(2, 3, 16, 16, seed=1)


@pytest.mark.parametrize("mode", ["eval", "train", "mixed"])
@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_model_untouched_after_use(cls, mode, x):
    net = make_net(mode)
    before = snapshot(net)
    with make_cam(cls, net) as cam:
        maps = cam(x, targets=[1, 2])
        maps_aug = cam(x, targets=None, aug_smooth=True, eigen_smooth=True)
        # Nothing of the call is kept on the CAM: no tensor among its attributes.
        assert not any(torch.is_tensor(v) for v in vars(cam).values())
    assert_untouched(net, before)
    # The map is computed in eval mode (deterministic despite Dropout), whatever the user's mode.
    with make_cam(cls, make_net("eval")) as cam:
        np.testing.assert_allclose(maps, cam(x, targets=[1, 2]), atol=1e-5)
    assert np.isfinite(maps_aug).all()


class Boom(Exception):
    pass


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_exception_inside_with_propagates_and_cleans_up(cls, x):
    net = make_net("mixed")
    before = snapshot(net)
    error = Boom("user code failed")
    with pytest.raises(Boom) as info:
        with make_cam(cls, net) as cam:
            cam(x, targets=[1, 2])
            raise error
    assert info.value is error
    assert_untouched(net, before)


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_exception_raised_by_a_target_propagates_and_cleans_up(cls, x):
    net = make_net("train")
    before = snapshot(net)

    def bad_target(output):
        raise Boom("target failed")

    with pytest.raises(Boom, match="target failed"):
        with make_cam(cls, net) as cam:
            cam(x, targets=[ClassifierOutputTarget(0), bad_target])
    # pytorch-grad-cam swallows IndexError in __exit__; we must not.
    with pytest.raises(IndexError, match="outside the model output"):
        with make_cam(cls, net) as cam:
            cam(x, targets=[0, 99])
    assert_untouched(net, before)


def fail_on_call(module: nn.Module, n: int):
    """A pre-hook making ``module`` raise on its n-th call: an error in the middle of batched scoring."""
    calls = [0]

    def hook(m: nn.Module, inputs: tuple) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise Boom("forward failed")

    return module.register_forward_pre_hook(hook)


@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM], ids=["ScoreCAM", "AblationCAM"])
def test_exception_during_batched_scoring_cleans_up(cls, x):
    # The classifier fails, not the root forward: AblationCAM's scoring may run only the
    # part of the network after the target layer (a torch.fx tail calling the same modules).
    model = make_net("mixed")
    handle = fail_on_call(model.fc, n=3)
    before = snapshot(model)
    with pytest.raises(Boom, match="forward failed"):
        with make_cam(cls, model) as cam:
            cam(x, targets=[1, 2])
    handle.remove()  # the test's own hook
    assert_untouched(model, before)


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_deleted_cam_leaves_nothing(cls, x):
    net = make_net("train")
    before = snapshot(net)
    cam = make_cam(cls, net)  # no ``with``, no release()
    cam(x, targets=[1, 2])
    ref = weakref.ref(cam)
    del cam
    gc.collect()
    assert ref() is None
    assert_untouched(net, before)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, XGradCAM], ids=lambda c: c.__name__)
def test_frozen_model_gives_the_same_gradient_maps(cls, x):
    net = make_net("eval")
    with cls(net, [net.features]) as cam:
        expected = cam(x, targets=[1, 2])
    net.requires_grad_(False)
    before = snapshot(net)
    with cls(net, [net.features]) as cam:
        maps = cam(x, targets=[1, 2])
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert maps.max() == 1.0
    assert_untouched(net, before)
    # Also when the target layer is an inner module of a frozen block (a leaf without a graph).
    with cls(net, [net.features[0]]) as cam:
        assert cam(x, targets=[1, 2]).max() == 1.0
    assert_untouched(net, before)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_tensors() -> int:
    with warnings.catch_warnings():  # isinstance() on some torch module proxies warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_no_memory_growth_over_repeated_calls():
    net = make_net("train")
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64)  # ~0.5 MB of activations per call: a leak would show
    cams = [GradCAM(net, [net.features]), ScoreCAM(net, [net.features], cskip=2, progress=False)]

    def run(n: int) -> None:
        for i in range(n):
            cams[i % 2](x, targets=[1, 2])

    run(20)  # warm-up: allocator caches, lazy initialisation
    gc.collect()
    tensors, rss = live_tensors(), rss_bytes()
    run(200)
    gc.collect()
    assert live_tensors() <= tensors
    grown = rss_bytes() - rss
    assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 200 calls"
