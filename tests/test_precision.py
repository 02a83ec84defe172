"""Reduced precision (``precision=``) and the scoring forwards' memory format (``memory_format=``).

The fp32 default must be exactly today's map (bit for bit where the chunk size is pinned),
channels-last must agree with contiguous to float rounding, every method must return float32 maps
in [0, 1] at bf16/fp16, and the user's model must come out of any call as it went in.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn

import pytorch_cam as pc
from pytorch_cam.methods import METHODS
from pytorch_cam.utils.model_targets import ClassifierOutputTarget


class SmallCNN(nn.Module):
    """conv -> relu -> conv ('features') -> relu ('act') -> global average pool -> linear."""

    def __init__(self, channels: int = 16, classes: int = 5, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, stride=stride)
        self.relu1 = nn.ReLU()
        self.features = nn.Conv2d(8, channels, 3, padding=1, stride=2)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.features(self.relu1(self.conv1(x))))).flatten(1))


def small_cnn(**kwargs) -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(**kwargs).eval()


def seeded_input(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


X = seeded_input(3, 3, 16, 16, seed=3)
TARGETS = [1, 3, 4]


def snapshot(model: nn.Module) -> dict:
    """Everything of the model a CAM call must leave as it was."""
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "dtype": {n: p.dtype for n, p in model.named_parameters()},
        "contiguous": {n: p.is_contiguous() for n, p in model.named_parameters()},
        "channels_last": {
            n: p.is_contiguous(memory_format=torch.channels_last) for n, p in model.named_parameters() if p.ndim == 4
        },
        "strides": {n: p.stride() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for name, value in before["params"].items():
        assert torch.equal(after["params"][name], value), f"parameter {name} changed"
    for name, value in before["buffers"].items():
        assert torch.equal(after["buffers"][name], value), f"buffer {name} changed"
    for key in ("dtype", "contiguous", "channels_last", "strides", "requires_grad", "training"):
        assert after[key] == before[key], f"the model's {key} changed"
    for name, m in model.named_modules():
        hooks = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)
        assert not any(hooks), f"a hook was left on {name or 'the model'}"
    assert all(p.grad is None for p in model.parameters()), ".grad was left on a parameter"


# ---------------------------------------------------------------- the fp32 default is today's map
@pytest.mark.parametrize("cls", [pc.GradCAM, pc.GradCAMPlusPlus, pc.LayerCAM, pc.EigenCAM])
def test_fp32_default_is_bitwise_the_explicit_fp32(cls):
    model = small_cnn()
    default = cls(model, [model.act])(X, targets=TARGETS)
    explicit = cls(model, [model.act], precision="fp32")(X, targets=TARGETS)
    assert np.array_equal(default, explicit)


@pytest.mark.parametrize("layer", ["act", "features"])  # AblationCAM: closed form (act) and the fx tail (features)
@pytest.mark.parametrize("cls", [pc.ScoreCAM, pc.AblationCAM])
def test_pinned_batch_size_fp32_is_bitwise_contiguous(cls, layer):
    model = small_cnn()
    target = [getattr(model, layer)]
    default = cls(model, target, batch_size=4, progress=False)(X, targets=TARGETS)
    fp32 = cls(model, target, batch_size=4, progress=False, precision="fp32")(X, targets=TARGETS)
    contiguous = cls(model, target, batch_size=4, progress=False, memory_format="contiguous")(X, targets=TARGETS)
    assert np.array_equal(default, fp32)
    assert np.array_equal(default, contiguous)


def test_pinned_batch_size_never_probes_the_memory_format():
    model = small_cnn(channels=48, stride=4)
    x = seeded_input(2, 3, 224, 224, seed=5)
    cam = pc.ScoreCAM(model, [model.act], batch_size=4, progress=False)
    cam(x, targets=[0, 1])
    assert cam.auto_memory_formats == {}


@pytest.mark.parametrize("layer", ["act", "features"])
@pytest.mark.parametrize("cls", [pc.ScoreCAM, pc.AblationCAM])
def test_channels_last_matches_contiguous(cls, layer):
    model = small_cnn()
    target = [getattr(model, layer)]
    contiguous = cls(model, target, batch_size=4, progress=False, memory_format="contiguous")(X, targets=TARGETS)
    cl = cls(model, target, batch_size=4, progress=False, memory_format="channels_last")(X, targets=TARGETS)
    np.testing.assert_allclose(cl, contiguous, atol=1e-5, rtol=0)


def test_auto_memory_format_is_measured_cached_and_exact():
    # 224x224 inputs cap "auto"'s chunk sizes at 16 (see perturbation.auto_candidates), so 96 pairs are
    # enough to probe chunk sizes and then both layouts; stride 4 keeps the model cheap.
    model = small_cnn(channels=48, stride=4)
    x = seeded_input(2, 3, 224, 224, seed=5)
    cam = pc.ScoreCAM(model, [model.act], progress=False)
    auto = cam(x, targets=[0, 1])
    key = ("score", (3, 224, 224), torch.float32)
    assert key in cam.auto_batch_sizes
    assert cam.auto_memory_formats.get(key) in ("contiguous", "channels_last")
    pinned = pc.ScoreCAM(model, [model.act], batch_size=8, progress=False)(x, targets=[0, 1])
    np.testing.assert_allclose(auto, pinned, atol=1e-5, rtol=0)
    # The second call reuses the cached choice: nothing is probed again.
    choice = dict(cam.auto_memory_formats)
    again = cam(x, targets=[0, 1])
    assert cam.auto_memory_formats == choice
    np.testing.assert_allclose(again, pinned, atol=1e-5, rtol=0)


def test_gpu_policy_takes_the_largest_chunk_and_warms_both_layouts(monkeypatch):
    """Where sizes are not probed (GPUs), every scoring forward is the largest chunk, and each layout's
    first chunk is a warm-up (cuDNN's per-shape setup) before the one that is timed."""
    import pytorch_cam.perturbation as pert

    monkeypatch.setattr(pert, "probes_chunk_size", lambda device: False)
    model = small_cnn(channels=48, stride=4)
    x = seeded_input(2, 3, 224, 224, seed=5)
    seen = []
    handle = model.register_forward_pre_hook(
        lambda m, a: seen.append((a[0].shape[0], a[0].is_contiguous(memory_format=torch.channels_last)))
    )
    cam = pc.ScoreCAM(model, [model.act], progress=False)
    try:
        auto = cam(x, targets=[0, 1])
    finally:
        handle.remove()
    largest = pert.auto_candidates(torch.device("cpu"), 224 * 224)[-1]
    key = ("score", (3, 224, 224), torch.float32)
    assert cam.auto_batch_sizes[key] == largest
    scoring = seen[1:]  # the first forward is the capture pass
    assert all(n == largest for n, _ in scoring[:-1])
    assert [cl for _, cl in scoring[:4]] == [False, False, True, True]
    assert cam.auto_memory_formats[key] in ("contiguous", "channels_last")
    pinned = pc.ScoreCAM(model, [model.act], batch_size=8, progress=False)(x, targets=[0, 1])
    np.testing.assert_allclose(auto, pinned, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- every method at reduced precision
FAST_KW = {
    "sscam": {"num_samples": 2, "seed": 0},
    "iscam": {"num_samples": 2},
    "smoothgradcampp": {"num_samples": 2, "seed": 0},
    "randomcam": {"seed": 0},
    "sess": {"scales": [16], "window_size": 16},
}


def build(name: str, model: nn.Module, **kwargs):
    cls = METHODS[name]
    params = inspect.signature(cls.__init__).parameters
    if "progress" in params or name in ("sess",):
        kwargs.setdefault("progress", False)
    return cls(model, [model.act], **FAST_KW.get(name, {}), **kwargs)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_returns_float32_maps_in_unit_range(name, precision, request):
    model = small_cnn()
    before = snapshot(model)
    maps = build(name, model, precision=precision)(X[:2], targets=[ClassifierOutputTarget(c) for c in (1, 3)])
    assert isinstance(maps, np.ndarray) and maps.dtype == np.float32
    assert maps.shape == (2, 16, 16)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert_untouched(model, before)


def test_bad_precision_is_a_value_error_naming_the_choices():
    model = small_cnn()
    for cls in (pc.GradCAM, pc.ScoreCAM, pc.AblationCAM, pc.EigenCAM):
        for bad in ("int8", "fp64", "bfloat", torch.float64):
            with pytest.raises(ValueError, match=r"precision must be 'fp32'.*'bf16'.*'fp16'"):
                cls(model, [model.act], precision=bad)


@pytest.mark.parametrize("alias,canonical", [("bfloat16", "bf16"), ("half", "fp16"), (torch.float16, "fp16")])
def test_precision_aliases(alias, canonical):
    model = small_cnn()
    assert pc.GradCAM(model, [model.act], precision=alias).precision == canonical


def test_bad_memory_format_is_a_value_error_naming_the_choices():
    model = small_cnn()
    with pytest.raises(ValueError, match="memory_format must be one of 'auto', 'contiguous', 'channels_last'"):
        pc.ScoreCAM(model, [model.act], memory_format="nhwc")


# ---------------------------------------------------------------- the user's model is untouched
@pytest.mark.parametrize(
    "make",
    [
        lambda m: pc.ScoreCAM(m, [m.act], precision="bf16", memory_format="channels_last", progress=False),
        lambda m: pc.ScoreCAM(m, [m.act], precision="bf16", progress=False),  # auto layout and chunks
        lambda m: pc.AblationCAM(m, [m.features], precision="bf16", memory_format="channels_last", progress=False),
        lambda m: pc.AblationCAM(m, [m.act], precision="fp16", progress=False),
        lambda m: pc.GradCAM(m, [m.act], precision="bf16"),
        lambda m: pc.ShapleyCAM(m, [m.act], precision="bf16"),
    ],
    ids=["scorecam-bf16-cl", "scorecam-bf16-auto", "ablationcam-bf16-cl", "ablationcam-fp16", "gradcam", "shapley"],
)
def test_reduced_precision_and_channels_last_leave_the_model_untouched(make):
    model = small_cnn()
    model.train()  # a CAM call evaluates in eval mode and must restore the flags
    model.fc.weight.requires_grad_(False)  # a frozen parameter stays frozen, the others trainable
    before = snapshot(model)
    x = X.clone()
    make(model)(x, targets=TARGETS)
    assert_untouched(model, before)
    assert torch.equal(x, X) and x.is_contiguous()  # the input too


def test_a_channels_last_model_stays_channels_last():
    model = small_cnn().to(memory_format=torch.channels_last)
    before = snapshot(model)
    pc.ScoreCAM(model, [model.act], precision="bf16", memory_format="contiguous", progress=False)(X, targets=TARGETS)
    assert_untouched(model, before)


def test_gradient_methods_at_bf16_correlate_with_fp32(pearson):
    # A property, not a closed form: bf16 keeps ~3 significant digits, far more than a map's ranking needs.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    x = seeded_input(4, 3, 32, 32, seed=7)
    targets = [0, 3, 5, 9]
    for cls in (pc.GradCAM, pc.GradCAMPlusPlus, pc.XGradCAM, pc.LayerCAM, pc.HiResCAM, pc.EigenGradCAM):
        fp32 = cls(model, [model[4]])(x, targets=targets)
        bf16 = cls(model, [model[4]], precision="bf16")(x, targets=targets)
        assert bf16.dtype == np.float32
        r = pearson(fp32, bf16)
        assert np.all(r > 0.9), (cls.__name__, r)
        assert not np.array_equal(fp32, bf16), f"{cls.__name__}: bf16 did not run at reduced precision"


def test_detach_false_with_bf16_returns_an_attached_float32_tensor():
    model = small_cnn()
    before = snapshot(model)
    maps = pc.GradCAM(model, [model.act], precision="bf16", detach=False)(X, targets=TARGETS)
    assert torch.is_tensor(maps) and maps.dtype == torch.float32 and maps.shape == (3, 16, 16)
    assert maps.requires_grad  # still a function of the parameters: a loss on it trains the model
    (grad,) = torch.autograd.grad(maps.sum(), model.conv1.weight)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    assert_untouched(model, before)


class TwoBranchHead(nn.Module):
    """features -> act, then a linear branch and a squared branch: the score is curved in the activations,
    so ShapleyCAM's Hessian term is not zero (y = w1.mean(A) + w2.mean(A^2): H.A/2 is half the squared
    branch's gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = small_cnn()
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body
        a = b.act(b.features(b.relu1(b.conv1(x))))
        return b.fc(b.pool(a).flatten(1)) + self.fc2(b.pool(a * a).flatten(1))


def test_shapleycam_keeps_its_hessian_term_at_bf16(pearson):
    torch.manual_seed(0)
    model = TwoBranchHead().eval()
    layer = [model.body.act]
    x = seeded_input(4, 3, 32, 32, seed=8)
    targets = [0, 1, 2, 3]
    shapley = pc.ShapleyCAM(model, layer)(x, targets=targets)
    gradcam = pc.GradCAM(model, layer)(x, targets=targets)
    assert pearson(shapley, gradcam).min() < 0.99  # the Hessian term matters on this model
    shapley_bf16 = pc.ShapleyCAM(model, layer, precision="bf16")(x, targets=targets)
    # bf16 must approximate ShapleyCAM, not fall back to Grad-CAM
    assert np.abs(shapley_bf16 - shapley).max() < np.abs(shapley_bf16 - gradcam).max()


def test_ablationcam_tail_keeps_its_fidelity_at_bf16(scenes_vit, pearson):
    from pytorch_cam.utils.scenes import generate_scenes

    x, labels, _ = generate_scenes(8, 0)
    layer = [scenes_vit.target_layer]
    targets = labels.tolist()
    fp32 = pc.AblationCAM(scenes_vit, layer, batch_size=64, progress=False)(x, targets=targets)
    bf16 = pc.AblationCAM(scenes_vit, layer, batch_size=64, progress=False, precision="bf16")(x, targets=targets)
    r = np.nan_to_num(pearson(fp32, bf16), nan=0.0)
    assert np.median(r) > 0.995, r  # today ~0.98 (down to 0.7 on single images); with the fix ~0.9998
