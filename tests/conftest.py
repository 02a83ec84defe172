"""Shared fixtures: seeded torchvision models without pretrained weights (offline) and tiny nets.

Session-scoped models are shared by many tests: a test must not change them (flags, hooks,
requires_grad). Tests that need to mutate a model build their own from ``tiny_cnn``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

# The tests use tiny inputs: intra-op threading gains little there and, on a shared machine,
# oversubscribed threads slow every forward down by an order of magnitude. Opt back in with
# OMP_NUM_THREADS.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


def seeded(builder, *args, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return builder(*args, **kwargs).eval()


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
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
