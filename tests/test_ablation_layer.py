"""``AblationCAM(..., ablation_layer=...)``: pytorch-grad-cam's ablation layers, checked against the peer.

* ``AblationLayer`` on a post-ReLU layer (a channel is set to 0) and on a convolution with negative
  values (set to ``min - 1e7``, decreasing copy by copy within a chunk), ratio 1.0: the peer's maps.
* ``AblationLayerVit`` on a tiny timm ViT (tokens, channels last) with a reshape transform: the peer's maps.
* ``ablation_layer=None`` (the default) is exact zeroing: a closed form computed here with hooks,
  and the same as ``AblationLayer()`` where zero is the layer's minimum.
* ``ratio_channels_to_ablate < 1``: the channel selection is the peer's whenever no channel is
  constant; a constant channel is the one deliberate deviation (see ``test_constant_channel_...``).

The peer captures the target layer's output without copying it, so an in-place op after the
layer (ResNet's ``out += identity``, ``ReLU(inplace=True)``) would corrupt its copy: the layers
explained here are followed by out-of-place ops only.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
import pytorch_grad_cam.ablation_layer as peer_layers  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as PeerTarget  # noqa: E402

import pytorch_cam  # noqa: E402
from pytorch_cam.ablation_layer import AblationLayer, AblationLayerVit  # noqa: E402
from pytorch_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

CLASSES = [1, 3]


class SmallCNN(nn.Module):
    """conv-ReLU-conv ('signed') -ReLU ('post_relu') -conv ('pooled', fed to the pooling) -pool-linear.

    'signed' and 'pooled' take both signs; 'signed' is followed by a ReLU, 'pooled' is not.
    No in-place ops anywhere.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.signed = nn.Conv2d(8, 12, 3, padding=1, stride=2)
        self.post_relu = nn.ReLU()
        self.pooled = nn.Conv2d(12, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.post_relu(self.signed(self.relu1(self.conv1(x))))
        return self.fc(self.pooled(x).mean(dim=(2, 3)))


def layer_output(model: SmallCNN, where: str, x: torch.Tensor) -> torch.Tensor:
    store = {}
    handle = getattr(model, where).register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return store["a"]


def fresh_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


def peer_maps(model, layer, x, ablation_layer, classes=CLASSES, **kwargs) -> np.ndarray:
    try:
        cam = pytorch_grad_cam.AblationCAM(model=model, target_layers=[layer], ablation_layer=ablation_layer, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the peer's 0/0 scores of constant channels
            return cam(input_tensor=x, targets=[PeerTarget(c) for c in classes])
    finally:
        model.zero_grad(set_to_none=True)


def our_maps(model, layer, x, ablation_layer, classes=CLASSES, **kwargs) -> np.ndarray:
    cam = pytorch_cam.AblationCAM(model, [layer], ablation_layer=ablation_layer, progress=False, **kwargs)
    return cam(x, targets=[ClassifierOutputTarget(c) for c in classes])


@pytest.fixture(scope="module")
def x(make_input) -> torch.Tensor:
    return make_input(2, 3, 32, 32, seed=5)


@pytest.mark.parametrize("where", ["post_relu", "signed", "pooled"])
@pytest.mark.parametrize("batch_size", [32, 5])  # one chunk of 12 (16) copies, and several chunks of 5
def test_ablation_layer_matches_the_peer(x, where, batch_size):
    ours_model, peer_model = fresh_cnn(), fresh_cnn()
    ours = our_maps(ours_model, getattr(ours_model, where), x, AblationLayer(), batch_size=batch_size)
    theirs = peer_maps(peer_model, getattr(peer_model, where), x, peer_layers.AblationLayer(), batch_size=batch_size)
    assert ours.shape == theirs.shape == (2, 32, 32)
    assert ours.max() == pytest.approx(1.0) and ours.min() == 0.0
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_the_layers_take_both_branches(x):
    # 'post_relu' exercises the zeroing branch (its minimum is 0), the others min - 1e7.
    model = fresh_cnn()
    assert float(layer_output(model, "post_relu", x).min()) == 0.0
    assert float(layer_output(model, "signed", x).min()) < 0
    assert float(layer_output(model, "pooled", x).min()) < 0


def closed_form_zeroing(model, layer, x, classes) -> torch.Tensor:
    """Exact Ablation-CAM: weight_k = (y - y_k) / y with channel k of ``layer``'s output set to 0."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach().clone()))
    with torch.no_grad():
        scores = model(x)[torch.arange(len(classes)), torch.tensor(classes)]
    handle.remove()
    acts = store["a"]
    c = acts.shape[1]
    weights = torch.zeros(len(classes), c)
    for k in range(c):

        def zero_k(m, i, o, k=k):
            o = o.clone()
            o[:, k] = 0
            return o

        handle = layer.register_forward_hook(zero_k)
        with torch.no_grad():
            ablated = model(x)[torch.arange(len(classes)), torch.tensor(classes)]
        handle.remove()
        weights[:, k] = (scores - ablated) / scores
    return (weights[:, :, None, None] * acts).sum(dim=1)


@pytest.mark.parametrize("where", ["post_relu", "signed", "pooled"])
def test_default_is_exact_zeroing(x, base_pipeline, where):
    model = fresh_cnn()
    layer = getattr(model, where)
    ours = our_maps(model, layer, x, None)
    expected = base_pipeline(closed_form_zeroing(model, layer, x, CLASSES), x.shape[2:])
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    grad_cam_style = our_maps(model, layer, x, AblationLayer())
    if where == "pooled":
        # Zero is not "off" here: min - 1e7 reaches the pooling unclipped and explains something else.
        assert np.abs(grad_cam_style - ours).max() > 0.05
    else:
        # A minimum of 0 (post_relu), or min - 1e7 clipped to 0 by the ReLU that follows (signed): zeroing.
        np.testing.assert_allclose(grad_cam_style, ours, atol=1e-5)


def tiny_vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5
    ).eval()


def tokens_to_map(tensor: torch.Tensor) -> torch.Tensor:
    """(B, 1 + 16, C) ViT tokens -> (B, C, 4, 4): the class token dropped. Shared by both libraries."""
    b, _, c = tensor.shape
    return tensor[:, 1:].reshape(b, 4, 4, c).permute(0, 3, 1, 2)


def test_ablation_layer_vit_matches_the_peer(make_input):
    x = make_input(2, 3, 32, 32, seed=6)
    ours_model, peer_model = tiny_vit(), tiny_vit()
    ours = pytorch_cam.AblationCAM(
        ours_model,
        [ours_model.blocks[-1].norm1],
        reshape_transform=tokens_to_map,
        ablation_layer=AblationLayerVit(),
        progress=False,
    )(x, targets=[ClassifierOutputTarget(c) for c in CLASSES])
    theirs = peer_maps(
        peer_model,
        peer_model.blocks[-1].norm1,
        x,
        peer_layers.AblationLayerVit(),
        reshape_transform=tokens_to_map,
    )
    assert ours.shape == (2, 32, 32) and ours.max() == pytest.approx(1.0)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_ablation_layer_vit_ablates_the_last_dimension(make_input):
    # Copy i of the stacked tokens (N, C) gets channel indices[i] pushed far below the minimum, every token.
    layer = AblationLayerVit()
    tokens = make_input(1, 5, 4, seed=7)
    layer.set_next_batch(0, tokens, num_channels_to_ablate=3)
    layer.indices = np.array([2, 0, 3])
    out = layer(None)
    low = float(tokens.min())
    for i, k in enumerate(layer.indices):
        assert torch.all(out[i, :, k] < low - 1e6)
        keep = [j for j in range(4) if j != k]
        torch.testing.assert_close(out[i][:, keep], tokens[0][:, keep])


# ---------------------------------------------------------------- ratio_channels_to_ablate < 1
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_channel_selection_matches_the_peer(make_input, ratio):
    acts = make_input(40, 6, 6, seed=8).numpy()  # no constant channel
    ours = AblationLayer().activations_to_be_ablated(acts, ratio)
    theirs = peer_layers.AblationLayer().activations_to_be_ablated(acts, ratio)
    assert len(ours) == 2 * int(40 * ratio)
    np.testing.assert_array_equal(ours, theirs)


def test_constant_channel_is_not_among_the_most_relevant(make_input):
    # Deliberate deviation. The peer scores a channel by (|a| - min) / max over the mask, which for a
    # constant channel is 0/0 = NaN; numpy's argsort puts NaN last, so the reversed order ranks the
    # constant channel as the *most* relevant and ablates it first. A constant channel carries no
    # spatial evidence, so we score it 0 (it is then among the least relevant picks).
    acts = make_input(40, 6, 6, seed=8).numpy()
    acts[7] = 0.0
    k = int(40 * 0.1)
    ours = AblationLayer().activations_to_be_ablated(acts, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        theirs = peer_layers.AblationLayer().activations_to_be_ablated(acts, 0.1)
    assert theirs[0] == 7  # the peer: NaN -> "most relevant"
    assert 7 not in ours[:k]  # ours: not among the most relevant
    assert 7 in ours[k:]  # a score of 0 is the lowest, so it is among the least relevant picks


def test_ratio_below_one_matches_the_peer_end_to_end(x):
    ours_model, peer_model = fresh_cnn(), fresh_cnn()
    ours = our_maps(ours_model, ours_model.pooled, x, AblationLayer(), ratio_channels_to_ablate=0.25)
    theirs = peer_maps(peer_model, peer_model.pooled, x, peer_layers.AblationLayer(), ratio_channels_to_ablate=0.25)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    # and it is not the full ablation: 8 of the 16 channels are left out
    assert np.abs(ours - our_maps(ours_model, ours_model.pooled, x, AblationLayer())).max() > 1e-3
