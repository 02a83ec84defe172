"""ScoreCAM's CSKIP: cskip=K scores only each image's top-K channels; K >= C is vanilla Score-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_cam import ScoreCAM

B, C = 2, 16


class Counting(nn.Module):
    """Wraps a model and records the input of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.detach().clone())
        return self.model(x)

    def scoring_rows(self) -> int:
        # The first forward is the ordinary one that captures the activations.
        return sum(c.shape[0] for c in self.calls[1:])


@pytest.fixture
def counted(tiny_cnn):
    # Target: the conv before the last ReLU, so no channel is constant for a random input.
    model = Counting(tiny_cnn(channels=C))
    return model, model.model.features


@pytest.fixture(scope="module")
def x(make_input):
    return make_input(B, 3, 16, 12, seed=0)  # non-square: a swapped H/W shows in the maps' shape


def score(model, layer, x, **kwargs):
    seen = {}
    cam = ScoreCAM(model, [layer], progress=False, **kwargs)
    original = cam.score_masks

    def spy(input_tensor, activations, keep, targets):
        seen["acts"], seen["keep"] = activations, keep
        seen["scores"] = original(input_tensor, activations, keep, targets)
        return seen["scores"]

    cam.score_masks = spy
    with cam:
        maps = cam(x, targets=[1, 3])
    return maps, seen


@pytest.mark.parametrize("cskip", [C, C + 5, 10_000, 1.0])
def test_cskip_at_least_channels_is_vanilla(counted, x, cskip):
    model, layer = counted
    vanilla, _ = score(model, layer, x)
    model.calls.clear()
    maps, seen = score(model, layer, x, cskip=cskip)
    assert np.array_equal(maps, vanilla)
    assert seen["keep"].all()
    assert model.scoring_rows() == B * C


@pytest.mark.parametrize("cskip,k", [(1, 1), (4, 4), (0.25, 4), (0.3, 5), (1e-6, 1)])
def test_cskip_scores_only_k_channels_per_image(counted, x, cskip, k):
    model, layer = counted
    _, full = score(model, layer, x)
    model.calls.clear()
    maps, seen = score(model, layer, x, cskip=cskip, batch_size=3)
    assert model.scoring_rows() == B * k
    assert all(c.shape[0] <= 3 for c in model.calls[1:])
    keep = seen["keep"]
    assert keep.sum(dim=1).tolist() == [k] * B
    # The kept channels are each image's k largest by maximum activation.
    top = full["acts"].flatten(2).amax(dim=2).topk(k, dim=1).indices
    assert torch.equal(keep, torch.zeros_like(keep).scatter_(1, top, True))
    # Kept channels get the same scores as in the vanilla run, the others none (-inf).
    torch.testing.assert_close(seen["scores"][keep], full["scores"][keep])
    assert torch.isneginf(seen["scores"][~keep]).all()
    assert maps.shape == (B, 16, 12) and maps.max() == 1.0


def test_cskip_weights_are_softmax_over_kept_channels(counted, x):
    model, layer = counted
    cam = ScoreCAM(model, [layer], cskip=4, progress=False)
    seen = {}
    original = cam.layer_weights

    def spy(*args):
        seen["w"] = original(*args)
        return seen["w"]

    cam.layer_weights = spy
    _, s = score(model, layer, x, cskip=4)
    with cam:
        cam(x, targets=[1, 3])
    w = seen["w"]
    keep = s["keep"]
    assert torch.all(w[~keep] == 0)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(B))
    torch.testing.assert_close(w[keep].reshape(B, 4), torch.softmax(s["scores"][keep].reshape(B, 4), dim=1))


def test_cskip_rank_std(counted, x):
    model, layer = counted
    _, seen = score(model, layer, x, cskip=3, cskip_rank="std")
    top = seen["acts"].flatten(2).std(dim=2).topk(3, dim=1).indices
    assert torch.equal(seen["keep"], torch.zeros_like(seen["keep"]).scatter_(1, top, True))


def test_constant_channels_share_one_zero_row(tiny_cnn, x):
    net = tiny_cnn(channels=C)
    dead = [2, 5, 11]
    with torch.no_grad():
        net.features.weight[dead] = 0
        net.features.bias[dead] = 0
    model = Counting(net)
    maps, seen = score(model, net.features, x)
    # Every non-constant channel once per image, plus a single all-zero input for the dead ones.
    assert model.scoring_rows() == B * (C - len(dead)) + 1
    zero_rows = [c for c in model.calls[1:] if not c.any()]
    assert len(zero_rows) == 1 and zero_rows[0].shape[0] == 1
    assert torch.isfinite(seen["scores"]).all()
    assert maps.max() == 1.0


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"cskip": 0}, ValueError, "at least one channel"),
        ({"cskip": -3}, ValueError, "at least one channel"),
        ({"cskip": 0.0}, ValueError, r"ratio must be in \(0, 1\]"),
        ({"cskip": 1.5}, ValueError, r"ratio must be in \(0, 1\]"),
        ({"cskip": True}, TypeError, "cskip must be an int"),
        ({"cskip": "8"}, TypeError, "cskip must be an int"),
        ({"cskip_rank": "mean"}, ValueError, "cskip_rank must be 'max' or 'std'"),
    ],
)
def test_bad_cskip_values(tiny_cnn, kwargs, error, match):
    net = tiny_cnn()
    with pytest.raises(error, match=match):
        ScoreCAM(net, [net.features], **kwargs)
