"""Shared fixtures: seeded models without pretrained weights (offline), seeded inputs, the
correlation helper and reference post-processing for closed forms.

Models: ``resnet18``, ``vgg11`` (session: shared by many tests, so a test must not change them:
flags, hooks, requires_grad, .grad); ``private_resnet18`` (the same weights, one per test module,
for modules that let a peer library touch the model); ``tiny_cnn`` (a fresh ``TinyCNN`` per
call); ``signed_cnn``; ``seeded_model`` (build any model seeded); ``scenes_cnn`` / ``scenes_vit``
(the trained models of ``pytorch_cam.utils.scenes``, weights committed under benchmarks/models).
Inputs: ``make_input(*shape, seed=...)`` and the shared batches ``x64`` and ``x32``.
Helpers: ``pearson`` (per-image correlation), ``base_pipeline``, ``acts_and_grads``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.func import functional_call

from pytorch_cam.base_cam import min_max_scale, resize_maps

# The tests use tiny inputs: intra-op threading gains little there and, on a shared machine,
# oversubscribed threads slow every forward down by an order of magnitude. Opt back in with
# OMP_NUM_THREADS.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


def seeded(builder, *args, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return builder(*args, **kwargs).eval()


@pytest.fixture(scope="session")
def seeded_model():
    """``seeded_model(builder, *args, **kwargs)``: ``builder(*args, **kwargs)`` built right after
    ``torch.manual_seed(0)``, in eval mode (a fresh model per call)."""
    return seeded


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
    return seeded(torchvision.models.resnet18, weights=None)


@pytest.fixture(scope="module")
def private_resnet18() -> nn.Module:
    """The weights of ``resnet18``, in a model of the test module's own: for modules whose tests
    let a peer library (pytorch-grad-cam, torchcam) run on it and leave ``.grad`` or hooks behind."""
    return seeded(torchvision.models.resnet18, weights=None)


@pytest.fixture(scope="session")
def vgg11() -> nn.Module:
    return seeded(torchvision.models.vgg11, weights=None)


class TinyCNN(nn.Module):
    """conv -> relu -> conv -> relu ('features') -> global average pool -> linear."""

    def __init__(self, in_channels: int = 3, channels: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.features = nn.Conv2d(8, channels, 3, padding=1, stride=2)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.features(self.relu1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny_cnn():
    """Factory for a fresh seeded ``TinyCNN`` (each test may mutate its own)."""

    def make(**kwargs) -> TinyCNN:
        return seeded(TinyCNN, **kwargs)

    return make


@pytest.fixture(scope="module")
def signed_cnn() -> nn.Module:
    """A small CNN whose explained layer ``[4]`` is a convolution feeding the pool directly, so its
    activations and gradients both take both signs (``TinyCNN.features`` is followed by a ReLU,
    whose gradient is zero wherever the activation is negative)."""
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


# ---------------------------------------------------------------- the scenes models
SCENES_WEIGHTS = {
    "cnn": Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "scenes_cnn.pt",
    "vit": Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "scenes_vit.pt",
}


@pytest.fixture(scope="session")
def scenes_weights() -> dict:
    """Model name ("cnn", "vit") -> the committed state-dict file of the trained scenes model."""
    return dict(SCENES_WEIGHTS)


@pytest.fixture(scope="session")
def scenes_cnn() -> nn.Module:
    """The trained ``ScenesCNN`` (trained and saved first if its weights file is missing)."""
    from pytorch_cam.utils.scenes import load_trained_cnn

    return load_trained_cnn(SCENES_WEIGHTS["cnn"])


@pytest.fixture(scope="session")
def scenes_vit() -> nn.Module:
    """The trained ``ScenesViT`` (trained and saved first if its weights file is missing)."""
    from pytorch_cam.utils.scenes import load_trained_vit

    return load_trained_vit(SCENES_WEIGHTS["vit"])


# ---------------------------------------------------------------- inputs
def seeded_input(*shape: int, seed: int = 0) -> torch.Tensor:
    """Standard normal values of ``shape`` from a private generator: the same values as
    ``torch.manual_seed(seed); torch.randn(*shape)``, without touching the global RNG."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def make_input():
    """``make_input(*shape, seed=0)``: a seeded random input batch (see ``seeded_input``)."""
    return seeded_input


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    """Two 64x64 RGB images (seed 1): resnet18's layer3 gives 4x4 maps, layer4 2x2."""
    return seeded_input(2, 3, 64, 64, seed=1)


@pytest.fixture(scope="module")
def x32() -> torch.Tensor:
    """Two 32x32 RGB images (seed 2), e.g. for ``signed_cnn`` (16x16 maps)."""
    return seeded_input(2, 3, 32, 32, seed=2)


# ---------------------------------------------------------------- reference computations
def _base_pipeline(layer_map: torch.Tensor, size) -> np.ndarray:
    return min_max_scale(resize_maps(min_max_scale(torch.relu(layer_map.detach())), size)).numpy()


@pytest.fixture(scope="session")
def base_pipeline():
    """``base_pipeline(layer_map (B, h, w), size)``: what every method does to one layer's map (ReLU,
    min-max, resize to ``size``, min-max) -> numpy (B, *size). Turns a closed-form or a peer's raw
    map into what our method must return."""
    return _base_pipeline


def _acts_and_grads(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes):
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    out = model(x)
    handle.remove()
    score = out[torch.arange(len(classes)), torch.tensor(classes)].sum()
    (g,) = torch.autograd.grad(score, store["a"])
    return store["a"].detach(), g


@pytest.fixture(scope="session")
def acts_and_grads():
    """``acts_and_grads(model, layer, x, classes)``: the layer's output and the gradient of each
    image's class score with respect to it, computed independently of pytorch_cam."""
    return _acts_and_grads


class FrozenWeights(nn.Module):
    """A shared model run with detached weights: the peer's backward then computes no parameter
    gradients (500 MB for vgg11) and leaves no ``.grad`` on the session fixture."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: its parameters are not ours
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # the peer reads its device from here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {name: p.detach() for name, p in self.model.named_parameters()}
        return functional_call(self.model, weights, (x.detach().requires_grad_(),))


def pearson_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of maps (B, ...) -> (B,); nan where a map is constant."""
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / den


@pytest.fixture(scope="session")
def pearson():
    return pearson_per_image
