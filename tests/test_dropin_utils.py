"""pytorch-grad-cam 1.5.7 utilities added for drop-in use: parity with the peer on small inputs.

Covers ``scale_accross_batch_and_channels``'s siblings in the other utility modules:
``swinT_reshape_transform``, ``fasterrcnn_reshape_transform``, the positional
``vit_reshape_transform(tensor, height, width)``, the ``replace_*`` and ``find_*`` layer helpers,
``SoftmaxOutputTarget``/``RawScoresOutputTarget`` and the ``pytorch_cam.fullgrad_cam`` module path.
(``scale_accross_batch_and_channels`` and ``preprocess_image`` are in test_image_utils.py.)
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from pytorch_cam.utils.find_layers import (
    find_layer_predicate_recursive,
    find_layer_types_recursive,
    replace_all_layer_type_recursive,
    replace_layer_recursive,
)
from pytorch_cam.utils.model_targets import FasterRCNNBoxScoreTarget, RawScoresOutputTarget, SoftmaxOutputTarget
from pytorch_cam.utils.reshape_transforms import (
    accepts_input_size,
    fasterrcnn_reshape_transform,
    swin_reshape_transform,
    swinT_reshape_transform,
    vit_reshape_transform,
)

peer_reshape = pytest.importorskip("pytorch_grad_cam.utils.reshape_transforms")
peer_layers = pytest.importorskip("pytorch_grad_cam.utils.find_layers")
peer_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ reshape transforms
def test_vit_reshape_transform_positional_grid_matches_grad_cam():
    tokens = _randn(2, 1 + 14 * 14, 8)
    expected = peer_reshape.vit_reshape_transform(tokens, 14, 14)
    assert torch.equal(vit_reshape_transform(tokens, 14, 14), expected)
    assert torch.equal(vit_reshape_transform(tokens, height=14, width=14), expected)
    # Omitted: inferred, which for a square grid with one class token is the peer's 14 x 14 default.
    assert torch.equal(vit_reshape_transform(tokens), peer_reshape.vit_reshape_transform(tokens))
    assert torch.equal(vit_reshape_transform(tokens, input_size=(224, 224)), expected)
    # A non-square grid, given positionally as in the peer's tutorials (functools.partial(..., height=, width=)).
    wide = _randn(1, 1 + 4 * 6, 5, seed=1)
    assert torch.equal(vit_reshape_transform(wide, 4, 6), peer_reshape.vit_reshape_transform(wide, 4, 6))
    partial = functools.partial(vit_reshape_transform, height=4, width=6)
    assert torch.equal(partial(wide), peer_reshape.vit_reshape_transform(wide, 4, 6))
    assert accepts_input_size(vit_reshape_transform) and accepts_input_size(partial)


def test_vit_reshape_transform_explicit_grid_errors():
    with pytest.raises(ValueError, match=r"197 tokens cannot be some prefix token\(s\) plus a 15x15 grid"):
        vit_reshape_transform(_randn(1, 197, 4), 15, 15)


def test_swinT_reshape_transform_matches_grad_cam():
    assert swinT_reshape_transform is swin_reshape_transform  # one implementation, the peer's name
    tokens = _randn(2, 7 * 7, 6)  # older timm Swin: (B, H*W, C)
    expected = peer_reshape.swinT_reshape_transform(tokens)
    assert torch.equal(swinT_reshape_transform(tokens, 7, 7), expected)
    assert torch.equal(swinT_reshape_transform(tokens), expected)  # square grid inferred
    # torchvision / timm >= 0.9 Swin: (B, H, W, C), which the peer's version cannot take (it reads C
    # from dim 2) unless C == W.
    channels_last = _randn(2, 7, 7, 6, seed=1)
    assert torch.equal(swinT_reshape_transform(channels_last), channels_last.permute(0, 3, 1, 2))
    assert torch.equal(swinT_reshape_transform(channels_last, 7, 7), channels_last.permute(0, 3, 1, 2))
    square = _randn(2, 7, 7, 7, seed=3)
    assert torch.equal(swinT_reshape_transform(square), peer_reshape.swinT_reshape_transform(square))
    rect = _randn(1, 3 * 5, 4, seed=2)
    assert torch.equal(swinT_reshape_transform(rect, 3, 5), peer_reshape.swinT_reshape_transform(rect, 3, 5))
    assert torch.equal(swinT_reshape_transform(rect, input_size=(96, 160)), swinT_reshape_transform(rect, 3, 5))
    with pytest.raises(ValueError, match=r"shape \(2, 7, 7, 6\) but height=8, width=7; leave height and width out"):
        swinT_reshape_transform(channels_last, 8, 7)


def _fpn(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    # torchvision's FPN levels: strides 4..64, 'pool' the coarsest (max-pooled '3').
    sizes = {"0": 32, "1": 16, "2": 8, "3": 4, "pool": 2}
    return OrderedDict((k, _randn(2, 3, s, s + 2, seed=seed + i)) for i, (k, s) in enumerate(sizes.items()))


def test_fasterrcnn_reshape_transform_matches_grad_cam():
    levels = _fpn()
    ours = fasterrcnn_reshape_transform(levels)
    assert ours.shape == (2, 15, 2, 4)
    torch.testing.assert_close(ours, peer_reshape.fasterrcnn_reshape_transform(levels), rtol=1e-6, atol=1e-6)
    # Each level's magnitude, resized: the 'pool' level passes through as |x|.
    assert torch.equal(ours[:, 12:], levels["pool"].abs())
    assert (ours >= 0).all()


def test_fasterrcnn_reshape_transform_without_pool_uses_coarsest_level():
    levels = _fpn()
    del levels["pool"]
    out = fasterrcnn_reshape_transform(levels)
    assert out.shape == (2, 12, 4, 6) and torch.equal(out[:, 9:], levels["3"].abs())


@pytest.mark.parametrize(
    "bad, message",
    [
        (_randn(1, 3, 4, 4), r"a dict of \(B, C, H, W\) tensors \(e.g. target_layers=\[model.backbone\]\), got Tensor"),
        ({}, "got dict"),
        ({"0": _randn(1, 3, 4)}, r"needs \(B, C, H, W\) tensors at every level, got \[\(1, 3, 4\)\]"),
    ],
    ids=["tensor", "empty", "3-d level"],
)
def test_fasterrcnn_reshape_transform_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        fasterrcnn_reshape_transform(bad)


# ------------------------------------------------------------------ layer helpers
class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()))
        self.shared = nn.ReLU()
        self.head = nn.ModuleList([self.shared, nn.Linear(4, 2), nn.ReLU6()])  # ReLU6 is no nn.ReLU subclass

    def forward(self, x):  # not run
        return x


def _layout(model: nn.Module) -> list:
    """(name, type) of every registered submodule, depth first: two models' structure, comparable."""
    out = []

    def walk(m, prefix):
        for name, child in m._modules.items():
            out.append((prefix + name, type(child).__name__))
            if child is not None:
                walk(child, prefix + name + ".")

    walk(model, "")
    return out


def test_replace_layer_recursive_matches_grad_cam():
    ours, peer = Nested(), Nested()
    assert replace_layer_recursive(ours, ours.stem[2][0], nn.Identity()) is True
    assert peer_layers.replace_layer_recursive(peer, peer.stem[2][0], nn.Identity()) is True
    assert _layout(ours) == _layout(peer)
    assert isinstance(ours.stem[2][0], nn.Identity)
    # Only the first registration of a shared module is replaced (depth first): 'shared', not head[0].
    new = nn.GELU()
    assert replace_layer_recursive(ours, ours.shared, new) is True
    assert peer_layers.replace_layer_recursive(peer, peer.shared, nn.GELU()) is True
    assert _layout(ours) == _layout(peer) and ours.shared is new and isinstance(ours.head[0], nn.ReLU)
    # Not found: False, model untouched.
    before = _layout(ours)
    assert replace_layer_recursive(ours, nn.ReLU(), nn.Identity()) is False
    assert _layout(ours) == before


def test_replace_helpers_skip_none_children():
    model = Nested()
    model.register_module("empty", None)  # a registered "no module" (the peer would crash on it)
    assert replace_layer_recursive(model, model.head[2], nn.Identity()) is True
    replace_all_layer_type_recursive(model, nn.ReLU, nn.Identity())
    assert isinstance(model.head[2], nn.Identity) and isinstance(model.shared, nn.Identity) and model.empty is None


def test_replace_all_layer_type_recursive_matches_grad_cam():
    ours, peer = Nested(), Nested()
    new_ours, new_peer = nn.GELU(), nn.GELU()
    assert replace_all_layer_type_recursive(ours, nn.ReLU, new_ours) is None
    peer_layers.replace_all_layer_type_recursive(peer, nn.ReLU, new_peer)
    assert _layout(ours) == _layout(peer)
    relus = [m for m in ours.modules() if type(m) is nn.ReLU]
    assert relus == [] and ours.stem[1] is new_ours and ours.head[0] is new_ours and ours.shared is new_ours
    assert isinstance(ours.head[2], nn.ReLU6)


def test_replace_all_layer_type_recursive_with_a_subclass_does_not_loop():
    class MyReLU(nn.ReLU):
        pass

    model = nn.Sequential(nn.ReLU(), nn.Sequential(nn.ReLU()))
    new = MyReLU()
    replace_all_layer_type_recursive(model, nn.ReLU, new)
    assert model[0] is new and model[1][0] is new


def test_find_layer_helpers_match_grad_cam(resnet18):
    for types in ([nn.Conv2d], [nn.BatchNorm2d, nn.Conv2d], [nn.Linear]):
        assert find_layer_types_recursive(resnet18, types) == peer_layers.find_layer_types_recursive(resnet18, types)

    def is_block(m):
        return type(m).__name__ == "BasicBlock"

    assert find_layer_predicate_recursive(resnet18, is_block) == peer_layers.find_layer_predicate_recursive(
        resnet18, is_block
    )
    # As in the peer, the model itself is never a candidate.
    assert find_layer_types_recursive(resnet18, [torchvision.models.ResNet]) == []
    assert find_layer_predicate_recursive(resnet18, lambda m: True)[0] is resnet18.conv1


def test_find_layer_types_recursive_counts_subclasses_once():
    class SameConv(nn.Conv2d):  # e.g. timm's Conv2dSame
        pass

    shared = nn.Conv2d(1, 1, 1)
    model = nn.Sequential(shared, SameConv(1, 1, 1), nn.Sequential(shared))
    assert find_layer_types_recursive(model, nn.Conv2d) == [shared, model[1]]
    assert peer_layers.find_layer_types_recursive(model, [nn.Conv2d]) == [shared, shared]  # the peer: exact types
    with pytest.raises(TypeError, match=r"layer_types must be a module class or a sequence of them"):
        find_layer_types_recursive(model, "Conv2d")


# ------------------------------------------------------------------ targets
@pytest.mark.parametrize("shape", [(5,), (3, 5)], ids=["row", "batch"])
def test_vector_targets_match_grad_cam(shape):
    out = _randn(*shape)
    torch.testing.assert_close(SoftmaxOutputTarget()(out), peer_targets.SoftmaxOutputTarget()(out))
    assert torch.equal(RawScoresOutputTarget()(out), peer_targets.RawScoresOutputTarget()(out))
    torch.testing.assert_close(SoftmaxOutputTarget()(out).sum(-1), torch.ones(shape[:-1]))
    assert repr(SoftmaxOutputTarget()) == "SoftmaxOutputTarget()"


def test_fasterrcnn_box_score_target_takes_model_outputs_keyword():
    detections = {
        "boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 20.0, 20.0]]),
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([0.9, 0.8]),
    }
    target = FasterRCNNBoxScoreTarget(labels=[2], bounding_boxes=[[10.0, 10.0, 20.0, 21.0]])
    peer = peer_targets.FasterRCNNBoxScoreTarget([2], torch.tensor([[10.0, 10.0, 20.0, 21.0]]))
    torch.testing.assert_close(target(model_outputs=detections).reshape(1), peer(model_outputs=detections))


# ------------------------------------------------------------------ module paths
def test_fullgrad_cam_module_reexports_fullgrad():
    import pytorch_cam
    from pytorch_cam.fullgrad import FullGrad
    from pytorch_cam.fullgrad_cam import FullGrad as FromPeerPath
    from pytorch_cam.methods import METHODS

    assert FromPeerPath is FullGrad is pytorch_cam.FullGrad
    assert METHODS["fullgrad"] is FullGrad  # registered once, not twice
