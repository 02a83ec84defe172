"""Bad or unusual input gets a clear error, one indexing rule, or a logged warning — never a raw torch error
or a silent empty map."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_cam import AblationCAM, EigenCAM, GradCAM, ScoreCAM
from pytorch_cam.utils.model_targets import BinaryClassifierOutputTarget

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
FAST = {"progress": False, "batch_size": 64}


def test_binary_target_on_a_multi_logit_model_raises(tiny_cnn):
    net = tiny_cnn()
    with pytest.raises(ValueError, match="one output logit per image.*ClassifierOutputTarget"):
        GradCAM(net, [net.features])(X, [BinaryClassifierOutputTarget(1)] * 2)
    assert BinaryClassifierOutputTarget(1)(torch.tensor([2.5])) == 2.5


@pytest.mark.parametrize("cls", [GradCAM, ScoreCAM, AblationCAM])
def test_negative_class_indices_mean_pythons_negative_indexing_everywhere(tiny_cnn, cls):
    net = tiny_cnn()  # 5 classes
    kwargs = FAST if cls is not GradCAM else {}
    negative = cls(net, [net.features], **kwargs)(X, [-1, -5])
    positive = cls(net, [net.features], **kwargs)(X, [4, 0])
    np.testing.assert_allclose(negative, positive, atol=1e-6)
    with pytest.raises(IndexError, match="target class -6 is outside"):
        cls(net, [net.features], **kwargs)(X, [-6, 0])


def test_empty_batch(tiny_cnn):
    net = tiny_cnn()
    with pytest.raises(ValueError, match="holds no images"):
        GradCAM(net, [net.features])(X[:0], [])


class _Bad:
    def __init__(self, value):
        self.value = value

    def __call__(self, output):
        return self.value(output)


@pytest.mark.parametrize(
    "target, error, match",
    [
        (_Bad(lambda o: o[:2]), ValueError, r"returned a tensor of shape \(2,\), not a scalar"),
        (_Bad(lambda o: float(o[1].detach())), TypeError, "returned float .* not a tensor"),
    ],
)
@pytest.mark.parametrize("cls", [GradCAM, ScoreCAM])
def test_targets_must_return_a_scalar_tensor(tiny_cnn, target, error, match, cls):
    net = tiny_cnn()
    kwargs = FAST if cls is ScoreCAM else {}
    with pytest.raises(error, match=match):
        cls(net, [net.features], **kwargs)(X, [target, target])


def test_dtype_mismatch_names_both_dtypes(tiny_cnn):
    net = tiny_cnn().double()
    with pytest.raises(TypeError, match=r"input_tensor is torch.float32 but the model's parameters are torch.float64"):
        GradCAM(net, [net.features])(X, [1, 2])
    assert GradCAM(net, [net.features])(X.double(), [1, 2]).dtype == np.float32


def test_targets_as_a_tensor_work_like_a_list(tiny_cnn):
    net = tiny_cnn()
    cam = GradCAM(net, [net.features])
    expected = cam(X, [1, 3])
    np.testing.assert_array_equal(cam(X, torch.tensor([1, 3])), expected)
    np.testing.assert_array_equal(cam(X, np.array([1, 3])), expected)
    np.testing.assert_array_equal(cam(X, [torch.tensor(1), torch.tensor(3)]), expected)
    with pytest.raises(TypeError, match="1-D tensor of class indices"):
        cam(X, torch.tensor([[1, 3]]))


def test_inference_mode_around_a_gradient_method_is_named(tiny_cnn):
    net = tiny_cnn()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inside torch.inference_mode"):
        GradCAM(net, [net.features])(X, [1, 2])
    with torch.inference_mode():  # gradient-free methods need no autograd
        assert EigenCAM(net, [net.features])(X).shape == (2, 16, 16)


@pytest.mark.parametrize("device", ["cpu:0", torch.device("cpu", 0), "cpu"])
def test_cpu_with_an_index_is_the_cpu(tiny_cnn, device):
    net = tiny_cnn()
    assert GradCAM(net, [net.features], device=device).device == torch.device("cpu")


def test_all_zero_map_and_one_by_one_layer_are_logged(tiny_cnn, caplog):
    net = tiny_cnn()
    with caplog.at_level(logging.WARNING, logger="pytorch_cam"):
        maps = GradCAM(net, [net.pool])(X, [1, 2])  # global pooling: 1x1
    assert not maps.any()
    assert "1x1 spatial output" in caplog.text and "all-zero map for image(s) [0, 1]" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pytorch_cam"):
        GradCAM(net, [net.features])(X, [1, 2])
    assert "all-zero" not in caplog.text


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(self.conv(torch.relu(self.conv(x))).mean(dim=(2, 3)))


def test_a_layer_that_runs_twice_is_logged(caplog):
    torch.manual_seed(0)
    net = _Twice().eval()
    with caplog.at_level(logging.WARNING, logger="pytorch_cam"):
        GradCAM(net, [net.conv])(X, [1, 2])
    assert "ran 2 times in one forward pass" in caplog.text and "last call is explained" in caplog.text


def test_cskip_above_the_channel_count_is_logged(tiny_cnn, caplog):
    net = tiny_cnn()  # 16 channels
    with caplog.at_level(logging.WARNING, logger="pytorch_cam"):
        ScoreCAM(net, [net.features], cskip=5000, **FAST)(X, [1, 2])
    assert "cskip=5000 keeps all 16 channels" in caplog.text


def test_a_long_score_cam_run_suggests_cskip(tiny_cnn, caplog, monkeypatch):
    import pytorch_cam.score_cam as score_cam

    monkeypatch.setattr(score_cam, "LONG_RUN_FORWARDS", 20)  # the real bound is 10^4 forwards
    net = tiny_cnn()
    with caplog.at_level(logging.WARNING, logger="pytorch_cam"):
        ScoreCAM(net, [net.features], cskip=8, **FAST)(X, [1, 2])
    assert "will score" not in caplog.text  # 16 masks
    with caplog.at_level(logging.WARNING, logger="pytorch_cam"):
        ScoreCAM(net, [net.features], **FAST)(X, [1, 2])
    assert "ScoreCAM will score about" in caplog.text and "cskip=16" in caplog.text
