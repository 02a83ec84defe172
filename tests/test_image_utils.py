"""Image helpers (pytorch_cam.utils.image): overlays, pre/de-processing and map scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytorch_cam.utils.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    deprocess_image,
    preprocess_image,
    scale_accross_batch_and_channels,
    scale_cam_image,
    show_cam_on_image,
)


@pytest.fixture(scope="module")
def img():
    return np.random.default_rng(0).uniform(0, 1, (6, 5, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def mask():
    return np.random.default_rng(1).uniform(0, 1, (6, 5)).astype(np.float32)


# ------------------------------------------------------------------ show_cam_on_image
def test_show_cam_on_image_output(img, mask):
    out = show_cam_on_image(img, mask)
    assert out.dtype == np.uint8 and out.shape == (6, 5, 3)
    assert out.max() == 255  # the blend is normalised by its peak


def test_show_cam_on_image_closed_form():
    grey = np.full((2, 3, 3), 0.25, np.float32)
    zeros = np.zeros((2, 3), np.float32)
    # image_weight=1: just the image, normalised by its peak.
    np.testing.assert_array_equal(show_cam_on_image(grey, zeros, image_weight=1.0), np.full((2, 3, 3), 255))
    # image_weight=0: just the heatmap; JET maps 0 to dark blue (BGR (128, 0, 0)) -> peak-normalised.
    np.testing.assert_array_equal(show_cam_on_image(grey, zeros, image_weight=0.0)[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(show_cam_on_image(grey, zeros, use_rgb=True, image_weight=0.0)[0, 0], [0, 0, 255])


def test_show_cam_on_image_use_rgb_swaps_channels(mask):
    grey = np.repeat(np.random.default_rng(2).uniform(0, 1, (6, 5, 1)), 3, axis=2).astype(np.float32)
    bgr = show_cam_on_image(grey, mask)
    rgb = show_cam_on_image(grey, mask, use_rgb=True)
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])
    assert not np.array_equal(rgb, bgr)


@pytest.mark.parametrize(
    "bad_img",
    [
        np.full((6, 5, 3), 200, np.uint8),
        np.full((6, 5, 3), 1.5, np.float32),
        np.full((6, 5, 3), -0.1, np.float32),
    ],
    ids=["uint8", "above-1", "negative"],
)
def test_show_cam_on_image_rejects_bad_images(bad_img, mask):
    with pytest.raises(ValueError, match=r"expects img as floats in \[0, 1\]; divide a uint8 image by 255"):
        show_cam_on_image(bad_img, mask)


@pytest.mark.parametrize("weight", [-0.1, 1.1])
def test_show_cam_on_image_weight_bounds(img, mask, weight):
    with pytest.raises(ValueError, match=r"image_weight must be in \[0, 1\]"):
        show_cam_on_image(img, mask, image_weight=weight)


def test_show_cam_on_image_mask_shape(img, mask):
    with pytest.raises(ValueError, match=r"mask \(5, 6\) must be 2-D with the image's height and width \(6, 5\)"):
        show_cam_on_image(img, mask.T)
    with pytest.raises(ValueError, match=r"maps\[0\]"):
        show_cam_on_image(img, mask[None])


# ------------------------------------------------------------------ pre/deprocessing and scaling
def test_preprocess_image_closed_form(img):
    # pytorch-grad-cam's defaults: mean = std = 0.5 per channel, i.e. [0, 1] -> [-1, 1].
    t = preprocess_image(img)
    assert t.shape == (1, 3, 6, 5) and t.dtype == torch.float32
    np.testing.assert_allclose(t[0].numpy(), 2 * img.transpose(2, 0, 1) - 1, rtol=1e-6, atol=1e-7)
    imagenet = preprocess_image(img, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    expected = (img - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    np.testing.assert_allclose(imagenet[0].numpy(), expected.transpose(2, 0, 1), rtol=1e-6)
    # A uint8 image is divided by 255 first, as torchvision's ToTensor does.
    as_uint8 = np.uint8(np.round(img * 255))
    np.testing.assert_allclose(preprocess_image(as_uint8), preprocess_image(as_uint8 / np.float32(255)), atol=1e-6)
    with pytest.raises(ValueError, match=r"expects an \(H, W, channels\) image, got shape \(6, 5\)"):
        preprocess_image(img[..., 0])
    with pytest.raises(ValueError, match=r"one value per channel of the image \(3\)"):
        preprocess_image(img, mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="std must not contain 0"):
        preprocess_image(img, std=[0.5, 0.0, 0.5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_preprocess_image_matches_grad_cam(img, dtype):
    peer = pytest.importorskip("pytorch_grad_cam.utils.image")
    image = np.uint8(np.round(img * 255)) if dtype == np.uint8 else img.astype(dtype)
    # Defaults, positional and keyword statistics: the same numbers as the peer (ours always float32).
    np.testing.assert_allclose(preprocess_image(image).numpy(), peer.preprocess_image(image).numpy(), atol=1e-6)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ours = preprocess_image(image, mean, std)
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), peer.preprocess_image(image, mean, std).numpy(), atol=1e-5)


def test_deprocess_image():
    x = np.random.default_rng(3).normal(5.0, 20.0, (4, 7, 3)).astype(np.float32)
    out = deprocess_image(x)
    assert out.dtype == np.uint8 and out.shape == x.shape
    expected = np.clip((x - x.mean()) / (x.std() + 1e-5) * 0.1 + 0.5, 0, 1) * 255
    assert np.abs(out.astype(np.float32) - expected).max() <= 1.0
    assert out.min() < 128 < out.max()


def test_scale_cam_image_per_map_min_max():
    cams = np.stack([np.arange(12, dtype=np.float32).reshape(3, 4), -5 * np.arange(12, dtype=np.float32).reshape(3, 4)])
    out = scale_cam_image(cams)
    assert out.dtype == np.float32 and out.shape == (2, 3, 4)
    np.testing.assert_allclose(out[0], np.arange(12).reshape(3, 4) / 11, rtol=1e-6)
    np.testing.assert_allclose(out[1], 1 - np.arange(12).reshape(3, 4) / 11, rtol=1e-6)


def test_scale_cam_image_constant_map_is_zero():
    out = scale_cam_image(np.full((2, 3, 4), 7.0, np.float32))
    np.testing.assert_array_equal(out, np.zeros((2, 3, 4), np.float32))


def test_scale_cam_image_resize_takes_width_height():
    cams = np.random.default_rng(4).uniform(0, 3, (2, 4, 6)).astype(np.float32)
    out = scale_cam_image(cams, target_size=(10, 8))  # (width, height), as cv2 and grad-cam
    assert out.shape == (2, 8, 10)
    assert out.min() >= 0 and out.max() <= 1
    peer = pytest.importorskip("pytorch_grad_cam.utils.image")
    np.testing.assert_allclose(out, peer.scale_cam_image(cams, (10, 8)), atol=1e-5)


# ------------------------------------------------------------------ scale_accross_batch_and_channels
def test_scale_accross_batch_and_channels_matches_grad_cam():
    peer = pytest.importorskip("pytorch_grad_cam.utils.image")
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2, (2, 3, 5, 7)).astype(np.float32)
    x[1, 2] = 4.0  # a constant map scales to 0
    out = scale_accross_batch_and_channels(x, (11, 9))  # (width, height)
    assert out.shape == (2, 3, 9, 11) and out.dtype == np.float32
    np.testing.assert_allclose(out, peer.scale_accross_batch_and_channels(x, (11, 9)), atol=1e-5)
    np.testing.assert_array_equal(out[1, 2], 0)
    # every (image, channel) map on its own: the same as scaling it alone
    np.testing.assert_allclose(out[0, 1], scale_cam_image(x[0, 1][None], (11, 9))[0], atol=1e-7)
    assert torch.is_tensor(torch.from_numpy(scale_accross_batch_and_channels(torch.from_numpy(x), (7, 5))))
    with pytest.raises(ValueError, match=r"\(batch, channels, \*spatial\)"):
        scale_accross_batch_and_channels(x[0, 0], (7, 5))


def test_scale_cam_image_volumes():
    vol = np.random.default_rng(6).uniform(0, 3, (2, 4, 5, 6)).astype(np.float32)  # (N, D, H, W)
    out = scale_cam_image(vol, (12, 10, 8))  # reverse axis order: (width, height, depth)
    assert out.shape == (2, 8, 10, 12) and out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(scale_cam_image(vol, (6, 5, 4)), scale_cam_image(vol), atol=1e-6)
    peer = pytest.importorskip("pytorch_grad_cam.utils.image")
    # The peer resizes volumes with a cubic spline, we trilinearly (as BaseCAM upsamples volume
    # maps): close on smooth maps, not equal.
    z, y, x = np.meshgrid(np.linspace(0, 1, 4), np.linspace(0, 1, 5), np.linspace(0, 1, 6), indexing="ij")
    smooth = np.stack([np.sin(2 * x + y) + z, np.cos(3 * y) * x + z * z]).astype(np.float32)
    diff = np.abs(scale_cam_image(smooth, (12, 10, 8)) - peer.scale_cam_image(smooth, (12, 10, 8)))
    assert diff.mean() < 0.02 and diff.max() < 0.1
    with pytest.raises(ValueError, match="one size per axis"):
        scale_cam_image(vol, (12, 10))
