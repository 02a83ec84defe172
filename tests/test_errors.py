"""Bad input raises an exception of the right type whose message names the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM
from pytorch_cam.utils.image import load_image
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

ALL = [GradCAM, GradCAMPlusPlus, XGradCAM, EigenCAM, ScoreCAM, AblationCAM]
IDS = [c.__name__ for c in ALL]
GRADIENT = [GradCAM, GradCAMPlusPlus, XGradCAM]


def make(cls, model, layers, **kwargs):
    if cls in (ScoreCAM, AblationCAM):
        kwargs.setdefault("progress", False)
    return cls(model, layers, **kwargs)


@pytest.fixture
def net(tiny_cnn):
    return tiny_cnn(classes=5)


@pytest.fixture(scope="module")
def x(make_input):
    return make_input(2, 3, 12, 12, seed=0)  # 12x12: the messages below name its shapes


# ------------------------------------------------------------------ the input tensor
@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_three_d_input(cls, net, x):
    with make(cls, net, [net.features]) as cam:
        with pytest.raises(ValueError, match=r"\(B, C, H, W\).*3-D tensor .*x\.unsqueeze\(0\)"):
            cam(x[0])


def test_non_tensor_input(net, x):
    with GradCAM(net, [net.features]) as cam:
        with pytest.raises(TypeError, match="input_tensor must be a torch.Tensor, got ndarray.*preprocess_image"):
            cam(x.numpy())
        with pytest.raises(TypeError, match="floating point tensor, got torch.uint8"):
            cam(x.to(torch.uint8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("cls", [GradCAM, ScoreCAM], ids=["GradCAM", "ScoreCAM"])
def test_nan_or_inf_input(cls, bad, net, x):
    x = x.clone()
    x[1, 0, 3, 4] = bad
    with make(cls, net, [net.features]) as cam:
        with pytest.raises(ValueError, match=r"NaN or Inf values \(images \[1\] of the batch\).*nan_to_num"):
            cam(x)


def test_aug_smooth_on_volumes(x):
    model = nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))
    with GradCAM(model, [model[1]]) as cam:
        with pytest.raises(ValueError, match="aug_smooth supports 2-D image batches"):
            cam(torch.randn(1, 1, 5, 6, 7), aug_smooth=True)


# ------------------------------------------------------------------ model and target layers
def test_model_must_be_a_module(net):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        GradCAM(lambda t: t, [net.features])


def test_target_layer_not_in_model(net, tiny_cnn):
    other = tiny_cnn()
    with pytest.raises(ValueError, match=r"target layer Conv2d is not a submodule of the model.*model\.layer4\[-1\]"):
        GradCAM(net, [other.features])
    with pytest.raises(ValueError, match="target_layers is empty"):
        GradCAM(net, [])
    with pytest.raises(TypeError, match="each target layer must be an nn.Module, got str"):
        GradCAM(net, ["features"])


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.unused = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_target_layer_never_reached(cls, x):
    model = WithUnused().eval()
    with make(cls, model, [model.unused]) as cam:
        with pytest.raises(RuntimeError, match=r"target layer 'unused' \(Conv2d\) was never reached.*print\(model\)"):
            cam(x)


class TokenNet(nn.Module):
    """Patchify into tokens (B, N, C), like a ViT block."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.block(self.patch(x).flatten(2).transpose(1, 2))
        return self.head(tokens.mean(dim=1))


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_token_activations_need_reshape_transform(cls, x):
    model = TokenNet().eval()
    with make(cls, model, [model.block]) as cam:
        with pytest.raises(ValueError, match=r"token-shaped activations \(2, 9, 8\).*reshape_transform="):
            cam(x)


def test_reshape_transform_must_give_spatial_layout(x):
    model = TokenNet().eval()
    with GradCAM(model, [model.block], reshape_transform=lambda t: t * 1) as cam:
        with pytest.raises(ValueError, match=r"your reshape_transform must return \(B, C, H, W\)"):
            cam(x)
    with GradCAM(model, [model.head]) as cam:
        with pytest.raises(ValueError, match=r"no spatial dimensions; choose a layer before global pooling"):
            cam(x)


class NaNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        return self.fc(torch.nan_to_num(a).mean(dim=(2, 3)))


def test_nan_activations(x):
    model = NaNNet().eval()
    with torch.no_grad():
        model.features.bias[0] = float("nan")
    with GradCAM(model, [model.features]) as cam:
        with pytest.raises(RuntimeError, match="produced NaN/Inf activations for a finite input"):
            cam(x)


# ------------------------------------------------------------------ targets
@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_class_index_outside_model_output(cls, net, x):
    with make(cls, net, [net.features]) as cam:
        with pytest.raises(IndexError, match=r"target class 7 is outside the model output, which has 5 classes"):
            cam(x, targets=[ClassifierOutputTarget(0), ClassifierOutputTarget(7)])
        with pytest.raises(IndexError, match="target class 5 is outside"):
            cam(x, targets=[5, 0])


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_targets_length_differs_from_batch(cls, net, x):
    with make(cls, net, [net.features]) as cam:
        with pytest.raises(ValueError, match="got 1 targets for a batch of 2 images; pass exactly one target"):
            cam(x, targets=[ClassifierOutputTarget(1)])
        with pytest.raises(ValueError, match="got 3 targets for a batch of 2"):
            cam(x, targets=[1, 2, 3])


def test_targets_must_be_a_list_of_targets(net, x):
    with GradCAM(net, [net.features]) as cam:
        with pytest.raises(TypeError, match="targets must be a list with one target per image"):
            cam(x, targets=3)
        with pytest.raises(TypeError, match="a target must be a class index or a callable"):
            cam(x, targets=["cat", "dog"])


def test_top_class_needs_a_classifier_output(x):
    seg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with GradCAM(seg, [seg[1]]) as cam:
        expected = r"returned a tensor of shape \(2, 2, 12, 12\). Pass one target.*Segmentation"
        with pytest.raises(ValueError, match=expected):
            cam(x)


class NoGradForward(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x)


@pytest.mark.parametrize("cls", GRADIENT, ids=lambda c: c.__name__)
def test_gradient_method_on_no_grad_forward(cls, net, x):
    model = NoGradForward(net)
    with cls(model, [net.features]) as cam:
        with pytest.raises(RuntimeError, match=r"forward seems to run under torch.no_grad\(\).*ScoreCAM"):
            cam(x)
    # The suggested gradient-free methods do work on such a model.
    for free in (ScoreCAM, EigenCAM):
        with make(free, model, [net.features]) as cam:
            assert cam(x).max() == 1.0


# ------------------------------------------------------------------ constructor arguments
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_cuda_requested_without_cuda(cls, net):
    with pytest.raises(RuntimeError, match=r"device='cuda' was requested but CUDA is not available.*device='cpu'"):
        make(cls, net, [net.features], device="cuda")


def test_device_mismatch(net):
    with pytest.raises(ValueError, match=r"device='meta' but the model's parameters are on cpu.*model\.to\('meta'\)"):
        GradCAM(net, [net.features], device="meta")
    assert GradCAM(net, [net.features], device="cpu").device == torch.device("cpu")


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM], ids=["ScoreCAM", "AblationCAM"])
def test_bad_batch_size(cls, bad, net, x):
    # Raised at construction or, when set as an attribute later, at the call.
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        with make(cls, net, [net.features], batch_size=bad) as cam:
            cam(x)
    with make(cls, net, [net.features]) as cam:
        cam.batch_size = bad
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            cam(x)


def test_ablation_arguments(net):
    with pytest.raises(TypeError, match="ablation-layer protocol .*no activations_to_be_ablated.*AblationLayer"):
        AblationCAM(net, [net.features], ablation_layer=nn.Identity())
    for ratio in (0.0, -0.5, 1.01):
        with pytest.raises(ValueError, match=r"ratio_channels_to_ablate must be in \(0, 1\]"):
            AblationCAM(net, [net.features], ratio_channels_to_ablate=ratio)


# ------------------------------------------------------------------ image files
def test_load_image_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"could not read an image from '.*missing\.png'.*check the path"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(FileNotFoundError, match="missing or not an image format"):
        load_image(str(text))


def test_load_image_reads_rgb_floats(tmp_path):
    import cv2

    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 255  # pure blue in OpenCV's BGR order
    path = tmp_path / "blue.png"
    cv2.imwrite(str(path), bgr)
    img = load_image(path)
    assert img.dtype == np.float32 and img.shape == (4, 5, 3)
    np.testing.assert_array_equal(img[0, 0], [0.0, 0.0, 1.0])
