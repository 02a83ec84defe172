"""Behaviour of the speed-ups: each fast path must give the same map as the plain one (no timings)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pytorch_cam import AblationCAM, GradCAM, ScoreCAM
from pytorch_cam.utils.fx_split import pooled_linear_head, split_after
from pytorch_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

X_SIZE = 32


@pytest.fixture(scope="module")
def model(seeded_model) -> nn.Module:
    return seeded_model(torchvision.models.resnet18, weights=None, num_classes=10)


@pytest.fixture(scope="module")
def x(make_input) -> torch.Tensor:
    return make_input(2, 3, X_SIZE, X_SIZE, seed=1)


class _Tiny(nn.Module):
    """A small CNN; ``branchy`` adds data-dependent control flow, which torch.fx cannot trace."""

    def __init__(self, branchy: bool = False, width: int = 16) -> None:
        super().__init__()
        self.branchy = branchy
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, width, 3, padding=1)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.branchy and bool(f.sum() > 1e9):
            f = f * 2
        return self.head(f)


@pytest.fixture(scope="module")
def tiny(seeded_model) -> nn.Module:
    return seeded_model(_Tiny, width=48)


@pytest.mark.parametrize("rank", ["max", "std"])
def test_cskip_all_channels_equals_vanilla(tiny, x, rank):
    layer = [tiny.features[3]]
    # Same fixed chunk size on both sides: bitwise equality is about which channels are scored.
    vanilla = ScoreCAM(tiny, layer, progress=False, batch_size=16)(x, targets=[1, 2])
    for cskip in (48, 1.0, 1000):
        kept = ScoreCAM(tiny, layer, cskip=cskip, cskip_rank=rank, progress=False, batch_size=16)(x, targets=[1, 2])
        np.testing.assert_array_equal(kept, vanilla)
    fewer = ScoreCAM(tiny, layer, cskip=4, cskip_rank=rank, progress=False)(x, targets=[1, 2])
    assert not np.allclose(fewer, vanilla)


def test_chunked_scorecam_equals_unchunked(tiny, x):
    layer = [tiny.features[3]]
    whole = ScoreCAM(tiny, layer, batch_size=10_000, progress=False)(x, targets=[1, 2])
    for bs in (1, 7, "auto"):
        chunked = ScoreCAM(tiny, layer, batch_size=bs, progress=False)(x, targets=[1, 2])
        np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_auto_batch_size_is_remembered_and_bounded(tiny, x):
    cam = ScoreCAM(tiny, [tiny.features[3]], progress=False)
    assert cam.batch_size == "auto"
    first = cam(x, targets=[1, 2])
    (chosen,) = cam.auto_batch_sizes.values()
    assert chosen in (2, 4, 8, 16, 32, 64, 128, 256)
    np.testing.assert_allclose(cam(x, targets=[1, 2]), first, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "fast", True])
def test_bad_batch_size_is_rejected(model, bad):
    with pytest.raises(ValueError, match="batch_size must be a positive int or 'auto'"):
        ScoreCAM(model, [model.layer4[-1]], batch_size=bad)


class _CountingScoreCAM(ScoreCAM):
    """Scores every kept channel itself, without deduplication, and counts the masked inputs."""

    scored = 0

    def perturbed_inputs(self, inputs, masks, generator):
        type(self).scored += inputs.shape[0]
        return super().perturbed_inputs(inputs, masks, generator)


def test_duplicate_and_constant_channels_are_scored_once_with_the_same_map(x):
    torch.manual_seed(0)
    net = _Tiny()
    conv = net.features[3]
    with torch.no_grad():
        conv.weight[4:8] = conv.weight[0:4]  # channels 4-7 duplicate 0-3
        conv.bias[4:8] = conv.bias[0:4]
        conv.weight[8:12] = 0  # channels 8-11 are constant
    targets = [0, 3]
    _CountingScoreCAM.scored = 0
    dedup = _CountingScoreCAM(net, [conv], progress=False)(x, targets=targets)
    assert _CountingScoreCAM.scored == x.shape[0] * (16 - 4 - 4)

    # Reference: every channel scored individually with its own masked input.
    acts = {}
    h = conv.register_forward_hook(lambda m, i, o: acts.setdefault("a", o.detach()))
    with torch.no_grad():
        net(x)
    h.remove()
    a = acts["a"]
    up = torch.nn.functional.interpolate(a, size=x.shape[2:], mode="bilinear", align_corners=False)
    flat = up.flatten(2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    masks = torch.where(hi > lo, (flat - lo) / torch.where(hi > lo, hi - lo, 1), 0).reshape(up.shape)
    with torch.no_grad():
        scores = torch.stack(
            [net(x[i : i + 1] * masks[i, :, None])[:, targets[i]] for i in range(x.shape[0])]
        )  # (B, C)
    cam = torch.relu((torch.softmax(scores, 1)[..., None, None] * a).sum(1))
    cam = cam.flatten(1)
    cam = (cam - cam.amin(1, keepdim=True)) / (cam.amax(1, keepdim=True) - cam.amin(1, keepdim=True))
    cam = torch.nn.functional.interpolate(
        cam.reshape(a.shape[0], 1, *a.shape[2:]), size=x.shape[2:], mode="bilinear", align_corners=False
    )[:, 0]
    cam = cam.flatten(1)
    cam = ((cam - cam.amin(1, keepdim=True)) / (cam.amax(1, keepdim=True) - cam.amin(1, keepdim=True))).reshape(
        dedup.shape
    )
    np.testing.assert_allclose(dedup, cam.numpy(), atol=1e-5)


@pytest.mark.parametrize("layer_name", ["layer4", "layer3", "layer2_conv1"])
def test_fx_split_ablation_equals_hook_path(model, x, layer_name, caplog):
    layer = model.layer2[0].conv1 if layer_name == "layer2_conv1" else getattr(model, layer_name)[-1]
    with caplog.at_level(logging.DEBUG, logger="pytorch_cam"):
        fast_cam = AblationCAM(model, [layer], progress=False)
        fast = fast_cam(x, targets=[1, 2])
    assert "torch.fx split" in caplog.text
    assert fast_cam._splits[id(layer)] is not None
    hook_cam = AblationCAM(model, [layer], progress=False)
    hook_cam._splits[id(layer)] = None  # force the forward-hook path
    slow = hook_cam(x, targets=[1, 2])
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)


def test_split_feeds_values_that_cross_the_layer(model):
    # layer2[0].conv1's input also feeds the block's downsample branch, after the layer.
    split = split_after(model, model.layer2[0].conv1)
    assert split.head is not None
    assert split_after(model, model.layer4[-1]).head is None


def test_untraceable_model_falls_back_to_hooks(seeded_model, x, caplog):
    net = seeded_model(_Tiny, branchy=True)
    layer = net.features[3]
    with caplog.at_level(logging.DEBUG, logger="pytorch_cam"):
        cam = AblationCAM(net, [layer], progress=False)
        got = cam(x, targets=[0, 1])
    assert "cannot split the model" in caplog.text and "falling back to the forward-hook path" in caplog.text
    assert cam._splits[id(layer)] is None
    plain = _Tiny(branchy=False).eval()
    plain.load_state_dict(net.state_dict())
    np.testing.assert_allclose(
        got, AblationCAM(plain, [plain.features[3]], progress=False)(x, targets=[0, 1]), atol=1e-5
    )


@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM])
def test_batch_equals_images_one_by_one(model, tiny, x, method):
    net, layer = (tiny, tiny.features[3]) if method is ScoreCAM else (model, model.layer4[-1])
    cam = method(net, [layer], progress=False)
    together = cam(x, targets=[1, 2])
    single = np.concatenate([cam(x[i : i + 1], targets=[t]) for i, t in enumerate([1, 2])])
    np.testing.assert_allclose(together, single, rtol=1e-4, atol=1e-4)


def test_gradient_forward_leaves_no_grad_mode_or_flags_behind(model, x):
    before = torch.is_grad_enabled()
    with torch.no_grad():
        GradCAM(model, [model.layer3[-1]])(x, targets=[1, 2])
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled() == before
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- batch_size chunks the scoring passes
@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM], ids=["ScoreCAM", "AblationCAM"])
@pytest.mark.parametrize("how", ["constructor", "attribute"])
def test_batch_size_is_honoured(tiny_cnn, make_input, cls, how):
    channels, batch = 16, 2
    model = tiny_cnn(channels=channels)
    layer = model.features  # conv output: no constant channels for a random input
    sizes: list = []
    # The classifier runs in every scoring pass (AblationCAM may run only the network after the
    # target layer, so the root forward is not the place to count).
    model.fc.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]))
    x = make_input(batch, 3, 12, 12, seed=0)
    if how == "constructor":
        cam = cls(model, [layer], batch_size=4, progress=False)
    else:
        cam = cls(model, [layer], progress=False)
        assert cam.batch_size == "auto"
        cam.batch_size = 4
    with cam:
        maps = cam(x, targets=[0, 1])
    # After the capture forward; drop AblationCAM's check of its fx tail (one row more than the batch).
    scoring = [s for s in sizes[1:] if s != batch + 1]
    # Pairs of different images share a chunk: every chunk is full.
    assert scoring == [4] * math.ceil(batch * channels / 4)
    with cls(model, [layer], batch_size=64, progress=False) as cam:
        np.testing.assert_allclose(cam(x, targets=[0, 1]), maps, atol=1e-5)


class _RunEveryAblation(AblationCAM):
    """AblationCAM without the closed form: every ablated copy goes through the traced tail."""

    def _closed_form_head(self, ctx, dim):
        return None


def _weights(cam, x, targets):
    seen = {}
    original = cam.layer_weights

    def spy(ctx):
        seen["w"] = original(ctx)
        return seen["w"]

    cam.layer_weights = spy
    maps = cam(x, targets)
    return maps, seen["w"]


def test_ablation_closed_form_for_a_pooled_linear_tail(private_resnet18, make_input):
    model = private_resnet18
    x = make_input(2, 3, 64, 64, seed=3)
    assert pooled_linear_head(split_after(model, model.layer4[-1])) is model.fc
    rows: list = []
    handle = model.fc.register_forward_pre_hook(lambda m, inp: rows.append(inp[0].shape[0]))
    try:
        maps, weights = _weights(AblationCAM(model, [model.layer4[-1]], progress=False), x, [1, -3])
    finally:
        handle.remove()
    # The capture forward and the one check of the tail (batch + 1 rows): no ablated copy ran.
    assert rows == [2, 3]
    ran_maps, ran_weights = _weights(_RunEveryAblation(model, [model.layer4[-1]], progress=False), x, [1, -3])
    torch.testing.assert_close(weights, ran_weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps, ran_maps, atol=1e-5)


def test_ablation_closed_form_only_where_it_is_exact(private_resnet18, vgg11, make_input):
    model = private_resnet18
    x = make_input(2, 3, 64, 64, seed=4)
    rows: list = []
    handle = model.fc.register_forward_pre_hook(lambda m, inp: rows.append(inp[0].shape[0]))
    try:  # a softmax target is not linear in the pooled channels: every ablated copy runs
        AblationCAM(model, [model.layer4[-1]], batch_size=256, progress=False)(
            x, [ClassifierOutputSoftmaxTarget(1)] * 2
        )
    finally:
        handle.remove()
    assert sum(rows) > 2 * 512
    # Other tails: an inner layer, VGG's classifier (ReLU, dropout), a network with a residual crossing.
    assert pooled_linear_head(split_after(model, model.layer3[-1])) is None
    assert pooled_linear_head(split_after(vgg11, vgg11.features[-1])) is None
    assert pooled_linear_head(split_after(model, model.layer4[0].conv1)) is None


def test_only_the_timed_chunks_wait_for_the_device(model, x, monkeypatch):
    """Regression: every chunk synchronised with the GPU twice, so the host could not queue the next
    chunk while one ran. Now a pinned batch size never waits, and "auto" waits only around the chunks
    it times."""
    import pytorch_cam.perturbation as pert

    waits = []
    monkeypatch.setattr(pert, "_sync", lambda device: waits.append(device))
    layer = model.layer3[-1]  # 2x2 maps at this input size: 256 masks per image to score
    ScoreCAM(model, [layer], batch_size=4, progress=False)(x, targets=[1] * x.shape[0])
    assert waits == []
    cam = ScoreCAM(model, [layer], progress=False)
    cam(x, targets=[1] * x.shape[0])
    probed = len(waits)
    timed_at_most = len(pert.auto_candidates(x.device, X_SIZE * X_SIZE)) + 2  # the sizes, then two layouts
    assert 0 < probed <= 2 * timed_at_most
    cam(x, targets=[1] * x.shape[0])  # the size is cached; the layouts are compared now (no room before)
    assert len(waits) - probed <= 2 * 2
    settled = len(waits)
    cam(x, targets=[1] * x.shape[0])  # both choices cached: nothing is timed again
    assert len(waits) == settled
