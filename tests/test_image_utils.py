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
    t = preprocess_image(img)
    assert t.shape == (1, 3, 6, 5) and t.dtype == torch.float32
    expected = (img - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    np.testing.assert_allclose(t[0].numpy(), expected.transpose(2, 0, 1), rtol=1e-6)
    custom = preprocess_image(img, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    np.testing.assert_allclose(custom[0].numpy(), (img.transpose(2, 0, 1) - 0.5) / 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match=r"expects an \(H, W, channels\) image, got shape \(6, 5\)"):
        preprocess_image(img[..., 0])


def test_preprocess_image_matches_grad_cam(img):
    peer = pytest.importorskip("pytorch_grad_cam.utils.image")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    np.testing.assert_allclose(preprocess_image(img).numpy(), peer.preprocess_image(img, mean, std).numpy(), atol=1e-6)


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
