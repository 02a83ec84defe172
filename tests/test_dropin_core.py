"""The pytorch-grad-cam API of BaseCAM: cam.outputs, cam.activations_and_grads, detach=False, forward's
positional order, ActivationsAndGradients on its own, and model outputs that are not a plain tensor."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM as PeerGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as PeerTarget
from torch import nn

import pytorch_cam as pc
from pytorch_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_cam.utils.model_targets import ClassifierOutputTarget


def test_outputs_after_a_call_are_the_models_detached_logits(tiny_cnn, make_input):
    model = tiny_cnn()
    x = make_input(2, 3, 16, 16)
    cam = pc.GradCAM(model, [model.features])
    assert cam.outputs is None
    cam(x, [1, 2])
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(cam.outputs, expected, atol=1e-6)
    assert not cam.outputs.requires_grad


def test_outputs_are_per_thread(tiny_cnn, make_input):
    model = tiny_cnn()
    cam = pc.GradCAM(model, [model.features])
    inputs = [make_input(1, 3, 16, 16, seed=s) for s in range(4)]
    seen = {}
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(3):
            cam(inputs[i], [0])
            seen[i] = cam.outputs.clone()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with torch.no_grad():
        for i in range(4):
            assert torch.allclose(seen[i], model(inputs[i]), atol=1e-6)


def test_activations_and_grads_match_the_peer(private_resnet18, make_input):
    model = private_resnet18
    x = make_input(2, 3, 64, 64)
    layers = [model.layer3[-1], model.layer4[-1]]
    ours = pc.GradCAM(model, layers)
    ours(x, [3, 7])
    # Our record is built from the call: no hook stays on the model (the peer's stay until release()).
    assert not any(m._forward_hooks for m in layers)
    peer = PeerGradCAM(model, layers)
    peer(x, [PeerTarget(3), PeerTarget(7)])
    record = ours.activations_and_grads
    assert len(record.activations) == len(record.gradients) == 2
    for mine, theirs in zip(record.activations, peer.activations_and_grads.activations):
        assert mine.device.type == "cpu" and not mine.requires_grad
        assert torch.allclose(mine, theirs, atol=1e-5)
    for mine, theirs in zip(record.gradients, peer.activations_and_grads.gradients):
        assert torch.allclose(mine, theirs, atol=1e-6)
    assert torch.allclose(ours.outputs, peer.outputs.detach(), atol=1e-5)
    peer.activations_and_grads.release()


def test_activations_and_gradients_alone_records_a_forward_and_backward(tiny_cnn, make_input):
    model = tiny_cnn()
    x = make_input(2, 3, 16, 16)
    record = ActivationsAndGradients(model, [model.conv1, model.features], None)
    out = record(x)
    assert not model.features._forward_hooks  # hooks only during the forward
    assert [a.shape[1] for a in record.activations] == [8, 16]
    out[:, 1].sum().backward()
    assert [g.shape for g in record.gradients] == [a.shape for a in record.activations]
    # The gradient of the score w.r.t. the features layer, computed independently.
    model.zero_grad()
    acts = {}
    handle = model.features.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    out = model(x)
    handle.remove()
    (grad,) = torch.autograd.grad(out[:, 1].sum(), acts["a"])
    assert torch.allclose(record.gradients[1], grad, atol=1e-6)


def test_forward_takes_eigen_smooth_third_as_in_grad_cam(tiny_cnn, make_input):
    model = tiny_cnn()
    x = make_input(2, 3, 16, 16)
    cam = pc.GradCAM(model, [model.features])
    positional = cam.forward(x, [ClassifierOutputTarget(1)] * 2, True)
    keyword = cam(x, [ClassifierOutputTarget(1)] * 2, eigen_smooth=True)
    plain = cam(x, [ClassifierOutputTarget(1)] * 2)
    np.testing.assert_array_equal(positional, keyword)
    assert not np.allclose(positional, plain)


@pytest.mark.parametrize("cls", [pc.GradCAM, pc.GradCAMPlusPlus, pc.EigenCAM, pc.ScoreCAM])
def test_detach_false_maps_train_the_model(cls, tiny_cnn, make_input):
    """A loss on the map backpropagates into the parameters (people train with a CAM loss)."""
    model = tiny_cnn()
    x = make_input(2, 3, 16, 16)
    kwargs = {"batch_size": 8, "progress": False} if cls is pc.ScoreCAM else {}
    cam = cls(model, [model.features], detach=False, **kwargs)
    maps = cam(x, [1, 2])
    assert torch.is_tensor(maps) and maps.dtype == torch.float32 and maps.shape == (2, 16, 16)
    assert maps.requires_grad
    reference = cls(model, [model.features], **kwargs)(x, [1, 2])
    np.testing.assert_allclose(maps.detach().numpy(), reference, atol=1e-5)
    (maps * torch.linspace(0, 1, 16)).sum().backward()
    grads = [p.grad for p in model.features.parameters()]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_detach_false_gradient_matches_finite_differences(make_input):
    """The gradient of a CAM loss w.r.t. a parameter is the true one (checked in float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.Flatten(2)
    ).double()
    feats = model[2]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model
            self.fc = nn.Linear(6, 3).double()

        def forward(self, x):
            return self.fc(self.body(x).mean(-1))

    net = Net().eval()
    x = make_input(1, 3, 8, 8).double()
    weight = torch.linspace(0.1, 1.0, 64, dtype=torch.float64).reshape(8, 8)

    def loss() -> torch.Tensor:
        return (pc.GradCAM(net, [feats], detach=False)(x, [1])[0].double() * weight).sum()

    value = loss()
    value.backward()
    analytic = net.fc.weight.grad[1, 2].item()
    eps = 1e-3  # the map is float32: a smaller step drowns in its rounding
    with torch.no_grad():
        net.fc.weight[1, 2] += eps
    up = loss().item()
    with torch.no_grad():
        net.fc.weight[1, 2] -= 2 * eps
    down = loss().item()
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-3, abs=1e-5)


class DictSegmenter(nn.Module):
    """A torchvision-segmentation-like model: returns {"out": (B, classes, H, W), "aux": ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        f = self.body(x)
        return OrderedDict(out=self.head(f), aux=self.head(f) * 0.5)


def test_dict_outputs_use_out_and_equal_a_wrapper(make_input):
    torch.manual_seed(0)
    model = DictSegmenter().eval()
    x = make_input(2, 3, 12, 12)
    mask = torch.zeros(12, 12)
    mask[2:6, 3:9] = 1
    targets = [pc.utils.model_targets.SemanticSegmentationTarget(1, mask)] * 2
    direct = pc.GradCAM(model, [model.body])(x, targets)

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)["out"]

    wrapped = pc.GradCAM(Wrapper(model), [model.body])(x, targets)
    np.testing.assert_array_equal(direct, wrapped)
    with pytest.raises(ValueError, match=r"returned OrderedDict\{'out': \(2, 3, 12, 12\).*SemanticSegmentationTarget"):
        pc.GradCAM(model, [model.body])(x)


class TupleDetector(nn.Module):
    """YOLO-style: returns (predictions (B, N, 5 + classes), features)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Conv2d(8, 7, 1)

    def forward(self, x):
        f = self.backbone(x)
        p = self.head(f).flatten(2).transpose(1, 2)
        return p, f


def test_tuple_outputs_class_agnostic_methods_need_no_target(make_input):
    torch.manual_seed(0)
    model = TupleDetector().eval()
    x = make_input(2, 3, 12, 12)
    maps = pc.EigenCAM(model, [model.backbone])(x)
    assert maps.shape == (2, 12, 12) and maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
    with pytest.raises(ValueError, match=r"returned a tuple of 2 items.*Pass one target per image.*EigenCAM"):
        pc.GradCAM(model, [model.backbone])(x)
    # A user target sees one image's rows of the first element (its predictions).
    seen = []

    def objectness(pred: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(pred.shape))
        return pred[:, 4].sum()

    maps = pc.GradCAM(model, [model.backbone])(x, [objectness, objectness])
    assert seen == [(144, 7), (144, 7)] and maps.shape == (2, 12, 12)


class HFLikeOutput(OrderedDict):
    """What HuggingFace's ModelOutput looks like to us: a dict with a .logits attribute."""

    @property
    def logits(self):
        return self["logits"]


def test_objects_with_logits_pick_the_top_class(tiny_cnn, make_input):
    inner = tiny_cnn()

    class HF(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = inner

        def forward(self, x):
            return HFLikeOutput(logits=self.net(x), hidden=x)

    model = HF().eval()
    x = make_input(2, 3, 16, 16)
    ours = pc.GradCAM(model, [inner.features])(x)
    expected = pc.GradCAM(inner, [inner.features])(x)
    np.testing.assert_array_equal(ours, expected)


def test_precision_argument_is_checked(tiny_cnn):
    model = tiny_cnn()
    with pytest.raises(ValueError, match="precision must be 'fp32'.*'bf16' or 'fp16'"):
        pc.GradCAM(model, [model.features], precision="int8")
    assert pc.GradCAM(model, [model.features], precision=torch.bfloat16).precision == "bf16"
