"""Image helpers: preprocessing, overlays and map scaling (numpy in, numpy out)."""

from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "show_cam_on_image",
    "preprocess_image",
    "deprocess_image",
    "scale_cam_image",
    "load_image",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]


def load_image(path: str) -> np.ndarray:
    """Read an image file as float32 RGB in [0, 1] (H, W, 3)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(
            f"could not read an image from {str(path)!r}: the file is missing or not an image "
            "format OpenCV can decode (png, jpg, bmp, ...); check the path"
        )
    return np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255.0


def show_cam_on_image(
    img: np.ndarray,
    mask: np.ndarray,
    use_rgb: bool = False,
    colormap: int = cv2.COLORMAP_JET,
    image_weight: float = 0.5,
) -> np.ndarray:
    """Blend a colour-mapped CAM (H, W) in [0, 1] over a float image (H, W, 3) in [0, 1].

    Returns a uint8 image; RGB if ``use_rgb`` else BGR (OpenCV's order, ready for cv2.imwrite).
    """
    img = np.asarray(img)
    mask = np.asarray(mask)
    if not np.issubdtype(img.dtype, np.floating) or img.size == 0 or img.min() < 0 or img.max() > 1:
        raise ValueError(
            "show_cam_on_image expects img as floats in [0, 1]; divide a uint8 image by 255 (np.float32(img) / 255)"
        )
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    if mask.ndim != 2 or img.ndim != 3 or mask.shape != img.shape[:2]:
        raise ValueError(
            f"mask {mask.shape} must be 2-D with the image's height and width {img.shape[:2]}; "
            "pass one map of the batch, e.g. maps[0]"
        )
    heat = cv2.applyColorMap(np.uint8(np.clip(mask, 0, 1) * 255), colormap)
    if use_rgb:
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    blend = (1.0 - image_weight) * np.float32(heat) / 255.0 + image_weight * img
    peak = blend.max()
    if peak > 0:
        blend = blend / peak
    return np.uint8(np.round(255 * blend))


def preprocess_image(
    img: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """(H, W, 3) float image in [0, 1] -> normalised (1, 3, H, W) float tensor."""
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"preprocess_image expects an (H, W, channels) image, got shape {arr.shape}")
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """Map an arbitrary-range image (e.g. guided backprop) to a viewable uint8 image."""
    img = np.asarray(img, dtype=np.float32)
    img = img - img.mean()
    img = img / (img.std() + 1e-5)
    img = np.clip(img * 0.1 + 0.5, 0, 1)
    return np.uint8(img * 255)


def scale_cam_image(cam: np.ndarray, target_size: Optional[Sequence[int]] = None) -> np.ndarray:
    """Min-max scale each map of a batch to [0, 1] and optionally resize to ``(width, height)``.

    ``target_size`` follows OpenCV's (width, height) order, as in pytorch-grad-cam.
    """
    out = []
    for m in np.asarray(cam, dtype=np.float32):
        rng = m.max() - m.min()
        m = (m - m.min()) / rng if rng > 0 else np.zeros_like(m)
        if target_size is not None:
            m = cv2.resize(m, tuple(int(s) for s in target_size))
        out.append(m)
    return np.float32(out)
