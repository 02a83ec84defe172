"""Output contract of every method: numpy float32 (B, *input spatial), finite, in [0, 1], max 1.

resnet18 runs the full matrix batch x targets x eigen_smooth x aug_smooth; vgg11 (whose 400 MB
classifier makes every forward slow on CPU) runs a pairwise covering of the same four factors.
Inputs are small and non-square so a swapped H/W shows up. The gradient-free methods score only
8 channels here (CSKIP / ratio_channels_to_ablate); their full cost is paid in test_parity.py.
The further methods (HiResCAM, LayerCAM, ..., RandomCAM) run once each on resnet18; their maps are
checked in their own files (test_elementwise_methods.py, test_fullgrad.py, test_cam.py, ...).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import pytorch_cam
from pytorch_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM
from pytorch_cam.methods import METHODS
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

H, W = 64, 48
VGG_H, VGG_W = 32, 48


def make_cam(cls, model: nn.Module, layer: nn.Module, channels: int, batch_size="auto"):
    if cls is ScoreCAM:
        return ScoreCAM(model, [layer], cskip=8, progress=False, batch_size=batch_size)
    if cls is AblationCAM:
        return AblationCAM(model, [layer], ratio_channels_to_ablate=8 / channels, progress=False, batch_size=batch_size)
    return cls(model=model, target_layers=[layer])


def check_maps(maps, batch: int, spatial: tuple, rescaled: bool) -> None:
    assert isinstance(maps, np.ndarray)
    assert maps.dtype == np.float32
    assert maps.shape == (batch, *spatial)
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    if rescaled:
        # Every map is min-max scaled: its max is exactly 1, or it is constant and all zeros.
        for m in maps:
            assert m.max() == 1.0 or not m.any(), (m.min(), m.max())
            assert m.min() == 0.0


def run_case(cls, model, layer, channels, x, use_targets, eigen, aug) -> np.ndarray:
    targets = [ClassifierOutputTarget(3 + 7 * i) for i in range(x.shape[0])] if use_targets else None
    with make_cam(cls, model, layer, channels) as cam:
        maps = cam(input_tensor=x, targets=targets, eigen_smooth=eigen, aug_smooth=aug)
    # aug_smooth averages de-augmented maps without rescaling (as pytorch-grad-cam does).
    check_maps(maps, x.shape[0], tuple(x.shape[2:]), rescaled=not aug)
    return maps


ALL = [GradCAM, GradCAMPlusPlus, XGradCAM, EigenCAM, ScoreCAM, AblationCAM]
IDS = [c.__name__ for c in ALL]


def test_registry_lists_every_tested_method():
    assert set(ALL) <= set(METHODS.values())


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return {1: torch.randn(1, 3, H, W, generator=g), 2: torch.randn(2, 3, H, W, generator=g)}


@pytest.mark.parametrize("cls", ALL, ids=IDS)
@pytest.mark.parametrize("aug", [False, True], ids=["noaug", "aug"])
@pytest.mark.parametrize("eigen", [False, True], ids=["noeig", "eig"])
@pytest.mark.parametrize("use_targets", [False, True], ids=["top", "tgt"])
@pytest.mark.parametrize("batch", [1, 2], ids=["b1", "b2"])
def test_resnet18_matrix(resnet18, inputs, cls, batch, use_targets, eigen, aug):
    run_case(cls, resnet18, resnet18.layer4[-1], 512, inputs[batch], use_targets, eigen, aug)


# Pairwise covering of (batch, explicit targets, eigen_smooth, aug_smooth): every pair of levels
# of any two factors appears in some row; aug_smooth (6 forwards) is on in two rows only.
VGG_ROWS = [
    (1, False, False, True),
    (1, True, True, False),
    (2, False, True, False),
    (2, True, False, False),
    (2, True, True, True),
]
assert all(
    {(r[i], r[j]) for r in VGG_ROWS} == set(itertools.product(*[{r[i] for r in VGG_ROWS}, {r[j] for r in VGG_ROWS}]))
    for i, j in itertools.combinations(range(4), 2)
)


@pytest.mark.parametrize("cls", ALL, ids=IDS)
@pytest.mark.parametrize("batch,use_targets,eigen,aug", VGG_ROWS)
def test_vgg11_matrix(vgg11, make_input, cls, batch, use_targets, eigen, aug):
    x = make_input(batch, 3, VGG_H, VGG_W, seed=2)
    # features[-2]: ReLU of the last conv, before the last max-pool (a 2x3 map at this size).
    run_case(cls, vgg11, vgg11.features[-2], 512, x, use_targets, eigen, aug)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, XGradCAM, EigenCAM, ScoreCAM, AblationCAM], ids=IDS)
def test_top_class_equals_explicit_argmax(resnet18, inputs, cls):
    x = inputs[2]
    with torch.no_grad():
        top = resnet18(x).argmax(dim=1).tolist()
    # A fixed chunk size: "auto" may time its way to a different one per call, and CPU convolutions
    # round differently per batch size (~1e-7); bitwise equality is about the targets here.
    with make_cam(cls, resnet18, resnet18.layer4[-1], 512, batch_size=8) as cam:
        a = cam(x, targets=None)
        b = cam(x, targets=[ClassifierOutputTarget(c) for c in top])
        c = cam(x, targets=top)  # plain ints are accepted as class indices
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_targets_change_gradient_maps(resnet18, inputs):
    x = inputs[1]
    with GradCAM(resnet18, [resnet18.layer3[-1]]) as cam:
        a = cam(x, targets=[ClassifierOutputTarget(1)])
        b = cam(x, targets=[ClassifierOutputTarget(2)])
    assert not np.allclose(a, b)


def test_batch_maps_equal_single_image_maps(resnet18, inputs):
    x = inputs[2]
    targets = [ClassifierOutputTarget(5), ClassifierOutputTarget(9)]
    for cls in ALL:
        with make_cam(cls, resnet18, resnet18.layer4[-1], 512) as cam:
            both = cam(x, targets=targets)
            singles = np.concatenate([cam(x[i : i + 1], targets=[targets[i]]) for i in range(2)])
        np.testing.assert_allclose(both, singles, atol=1e-4, err_msg=cls.__name__)


def test_multiple_target_layers(resnet18, inputs):
    x = inputs[2]
    # Both layers give 2x2 maps, whose bilinear upsampling keeps min and max (every source pixel
    # is a corner), so the single-layer maps are the per-layer maps before the final rescale.
    layers = [resnet18.layer4[0], resnet18.layer4[-1]]
    with GradCAM(resnet18, layers) as cam:
        both = cam(x, targets=[1, 2])
    with GradCAM(resnet18, layers[:1]) as cam:
        first = cam(x, targets=[1, 2])
    with GradCAM(resnet18, layers[1:]) as cam:
        second = cam(x, targets=[1, 2])
    check_maps(both, 2, (H, W), rescaled=True)
    # The mean of the per-layer scaled maps, min-max scaled again.
    mean = (first + second) / 2
    lo = mean.min(axis=(1, 2), keepdims=True)
    hi = mean.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(both, (mean - lo) / (hi - lo), atol=1e-5)


class Tiny3D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.features = nn.Sequential(nn.Conv3d(4, 8, 3, padding=1, stride=2), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(torch.relu(self.conv1(x)))
        return self.fc(x.mean(dim=(2, 3, 4)))


@pytest.mark.parametrize("cls", ALL, ids=IDS)
@pytest.mark.parametrize("batch", [1, 2])
def test_volume_input(cls, batch):
    torch.manual_seed(0)
    model = Tiny3D().eval()
    x = torch.randn(batch, 1, 6, 12, 10)
    with make_cam(cls, model, model.features, 8) as cam:
        maps = cam(x, targets=[ClassifierOutputTarget(i % 3) for i in range(batch)])
    check_maps(maps, batch, (6, 12, 10), rescaled=True)
    assert all(m.max() == 1.0 for m in maps)  # random volumes give non-constant maps


# ---------------------------------------------------------------- the further methods, at resnet18's layer3
FURTHER = ["hirescam", "layercam", "eigengradcam", "gradcamelementwise", "fullgrad", "cam", "sscam", "iscam"]
FURTHER += ["smoothgradcampp", "randomcam"]
FAST_KW = {
    "sscam": {"num_samples": 2, "cskip": 8, "seed": 0, "progress": False},
    "iscam": {"num_samples": 2, "cskip": 8, "progress": False},
    "smoothgradcampp": {"num_samples": 2, "seed": 0},
    "randomcam": {"seed": 0},
}


@pytest.mark.parametrize("name", FURTHER)
def test_further_method_output_contract(private_resnet18, x64, name):
    resnet = private_resnet18
    assert name in METHODS and METHODS[name].__name__ in pytorch_cam.__all__
    layer = resnet.layer4[-1] if name == "cam" else resnet.layer3[-1]
    flags = [(m, m.training) for m in resnet.modules()]
    maps = METHODS[name](resnet, [layer], **FAST_KW.get(name, {}))(x64, [ClassifierOutputTarget(c) for c in (3, 7)])
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert all(m.training == t for m, t in flags)
    assert all(not m._forward_hooks for m in resnet.modules())
