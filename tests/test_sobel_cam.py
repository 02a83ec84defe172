"""Sobel-CAM: the function's bit-exact parity with pytorch-grad-cam (OpenCV), closed forms, the CAM class."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pytorch_cam import SobelCAM
from pytorch_cam.methods import METHODS
from pytorch_cam.sobel_cam import rgb_to_gray, sobel_cam
from pytorch_cam.utils.image import preprocess_image

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.sobel_cam import sobel_cam as peer_sobel_cam  # noqa: E402

CHELSEA = Path(__file__).resolve().parents[1] / "usage_examples" / "images" / "chelsea.png"


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(CHELSEA)), cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- the function
def test_exact_on_the_bundled_photo(chelsea):
    ours = sobel_cam(chelsea)
    assert ours.dtype == np.uint8 and ours.shape == chelsea.shape[:2]
    np.testing.assert_array_equal(ours, peer_sobel_cam(chelsea))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 2), (3, 5), (37, 64), (128, 96)])
def test_exact_on_random_images(shape):
    # Uniform noise saturates many gradients (|G| > 255) and hits every rounding case of the average.
    img = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    np.testing.assert_array_equal(sobel_cam(img), peer_sobel_cam(img))


def test_exact_on_smooth_images_and_views():
    # Small gradients (no saturation), and a non-contiguous view.
    yy, xx = np.mgrid[0:48, 0:80]
    img = np.stack([xx * 3, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    np.testing.assert_array_equal(sobel_cam(img), peer_sobel_cam(img))
    view = img[::2, ::3]
    np.testing.assert_array_equal(sobel_cam(view), peer_sobel_cam(np.ascontiguousarray(view)))


def test_grayscale_is_opencvs_fixed_point():
    # All 65536 (R, G) pairs with B on a coarse grid, plus the 256 grays: cvtColor's rounding is exact.
    v = np.arange(256)
    r, g, b = np.meshgrid(v, v, np.r_[0:256:15, 255], indexing="ij")
    colours = np.stack([r, g, b], axis=-1).reshape(1, -1, 3).astype(np.uint8)
    colours = np.concatenate([colours, np.repeat(v, 3).reshape(1, -1, 3).astype(np.uint8)], axis=1)
    ours = rgb_to_gray(torch.from_numpy(colours)).numpy()
    np.testing.assert_array_equal(ours, cv2.cvtColor(colours, cv2.COLOR_RGB2GRAY))
    # Plain float weights (0.299, 0.587, 0.114) rounded would miss some of them.
    plain = np.round(colours.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    assert (plain != ours).any()


def test_closed_form_step_edges():
    # Vertical step from 0 to v: G_x = 4 v on the two columns beside the step, G_y = 0.
    for v, expected in [(50, 100), (63, 126), (100, 128)]:  # 400 saturates to 255; 127.5 rounds to even 128
        img = np.zeros((6, 8, 3), dtype=np.uint8)
        img[:, 4:] = v
        out = sobel_cam(img)
        assert (out[:, 3:5] == expected).all() and not np.delete(out, [3, 4], axis=1).any(), (v, out)


@pytest.mark.parametrize(
    "img, error, match",
    [
        (np.zeros((4, 4, 3), np.float32), TypeError, "uint8"),
        (np.zeros((4, 4), np.uint8), ValueError, r"\(H, W, 3\)"),
        (np.zeros((4, 4, 4), np.uint8), ValueError, r"\(H, W, 3\)"),
        (torch.zeros(4, 4, 3, dtype=torch.uint8), TypeError, "numpy array"),
    ],
)
def test_bad_images(img, error, match):
    with pytest.raises(error, match=match):
        sobel_cam(img)


# ---------------------------------------------------------------- the CAM class
class Counter(torch.nn.Module):
    """Counts forward calls; a tiny classifier otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x).mean(dim=(2, 3))


def test_registered_and_built_like_every_method():
    model = Counter()
    assert METHODS["sobelcam"] is SobelCAM
    cam = SobelCAM(model=model, target_layers=[model.conv])
    assert cam.layers == [] and cam.target_layers == [] and cam.inferred.target_layers is None
    assert SobelCAM(model).layers == []


def test_model_free_and_class_agnostic():
    model = Counter()
    x = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    with SobelCAM(model, [model.conv]) as cam:
        a = cam(x)
        b = cam(x, [1, 3], eigen_smooth=True)
        c = cam(x, aug_smooth=True)
    assert model.calls == 0 and not model._forward_hooks
    assert a.shape == (2, 20, 24) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # Flips and brightness scaling commute with the normalised edge map.
    np.testing.assert_allclose(c, a, atol=1e-5)
    for m in a:
        assert m.min() == 0.0 and m.max() == 1.0


def test_class_is_the_float_sobel_of_the_luminance(chelsea):
    # On the image scaled to [0, 1] the class is grad-cam's map without saturation and rounding.
    x = torch.from_numpy(chelsea).permute(2, 0, 1)[None].float() / 255
    ours = SobelCAM(torch.nn.Identity())(x)[0]
    gray = x[0].permute(1, 2, 0).numpy() @ np.array([0.299, 0.587, 0.114], np.float32)
    gx = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)
    edges = 0.5 * np.abs(gx) + 0.5 * np.abs(gy)
    np.testing.assert_allclose(ours, (edges - edges.min()) / (edges.max() - edges.min()), atol=1e-5)


def test_class_on_a_normalised_tensor_matches_the_function(chelsea, pearson):
    scaled = np.float32(chelsea) / 255
    normalised = SobelCAM(torch.nn.Identity())(preprocess_image(scaled))  # normalised with mean = std = 0.5
    plain = SobelCAM(torch.nn.Identity())(torch.from_numpy(scaled).permute(2, 0, 1)[None])
    # ImageNet's per-channel stds are nearly equal: normalising barely reweighs the luminance.
    assert pearson(normalised, plain)[0] >= 0.9999
    # The function differs by its uint8 grayscale, saturation and rounding only.
    assert pearson(normalised, np.float32(sobel_cam(chelsea))[None])[0] >= 0.99


def test_other_channel_counts_use_the_channel_mean():
    x = torch.rand(1, 2, 10, 12, generator=torch.Generator().manual_seed(1))
    cam = SobelCAM(torch.nn.Identity())
    np.testing.assert_allclose(cam(x), cam(x.mean(dim=1, keepdim=True)), atol=1e-6)


def test_constant_image_gives_zeros():
    assert not SobelCAM(torch.nn.Identity())(torch.full((2, 3, 8, 8), 0.3)).any()


def test_volumes_are_rejected():
    with pytest.raises(ValueError, match=r"2-D image batches \(B, C, H, W\)"):
        SobelCAM(torch.nn.Identity())(torch.zeros(1, 1, 4, 6, 6))
