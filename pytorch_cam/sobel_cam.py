"""Sobel-CAM: an edge map as a model-free baseline.

Sobel & Feldman, "An Isotropic 3x3 Image Gradient Operator", talk at the Stanford Artificial
Intelligence Project, 1968. As in pytorch-grad-cam, a saliency map that ignores the model
entirely: a method that does no better than it on a metric only finds edges.

With Y the grayscale image and the 3x3 Sobel kernels (reflect-101 border, OpenCV's default),

    G_x = [1 2 1]^T [-1 0 1] * Y,    G_y = [-1 0 1]^T [1 2 1] * Y
    S   = 0.5 |G_x| + 0.5 |G_y|

``sobel_cam(img)`` is pytorch-grad-cam's function on an RGB uint8 image and reproduces OpenCV
bit for bit: Y = round((9798 R + 19235 G + 3735 B) / 2^15) (cvtColor's fixed-point weights for
0.299 / 0.587 / 0.114), each |G| saturated to 255 (convertScaleAbs), and S rounded half to even
(addWeighted).

``SobelCAM`` is the same baseline as a CAM method, computed on the input tensor itself, batched
on its device: Y is the luminance 0.299 x_0 + 0.587 x_1 + 0.114 x_2 of a 3-channel input (the
channel mean for any other channel count), S is kept in floating point (no saturation, no
rounding) and min-max scaled per image. Per-channel normalisation (x - m_c) / s_c only adds a
constant (which the gradient removes) and reweighs the channels by 1 / s_c; with ImageNet's
nearly equal s_c (0.229, 0.224, 0.225) the map of a normalised tensor is, up to scale, the
Sobel map of the image's luminance.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_cam.base_cam import BaseCAM, Inferred, TargetLike, min_max_scale

logger = logging.getLogger("pytorch_cam")

# OpenCV's fixed-point RGB -> gray weights for 8-bit images (sum 2^15).
_GRAY_FIXED = (9798, 19235, 3735)
_GRAY_SHIFT = 15
_LUMA = (0.299, 0.587, 0.114)


def _reflect101_index(n: int, device: torch.device) -> torch.Tensor:
    """Indices that pad a length-``n`` axis by one on each side with OpenCV's BORDER_REFLECT_101."""
    if n == 1:  # OpenCV repeats the only element (F.pad's reflect mode refuses this size)
        return torch.zeros(3, dtype=torch.long, device=device)
    return torch.cat(
        [torch.tensor([1], device=device), torch.arange(n, device=device), torch.tensor([n - 2], device=device)]
    )


def sobel_gradients(gray: torch.Tensor) -> torch.Tensor:
    """|G_x| and |G_y| of grayscale images (B, H, W) -> (B, 2, H, W), with a reflect-101 border."""
    h, w = gray.shape[-2:]
    x = gray[:, None].index_select(2, _reflect101_index(h, gray.device))
    x = x.index_select(3, _reflect101_index(w, gray.device))
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    diff = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    # Cross-correlation (conv2d) with [-1 0 1] is OpenCV's derivative direction; the sign is dropped anyway.
    kernels = torch.stack([torch.outer(smooth, diff), torch.outer(diff, smooth)])[:, None]
    return F.conv2d(x, kernels).abs()


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """Grayscale (...) uint8 of RGB uint8 pixels (..., 3), bit-exact with OpenCV's cvtColor(RGB2GRAY)."""
    weights = torch.tensor(_GRAY_FIXED, dtype=torch.int32, device=rgb.device)
    fixed = (rgb.to(torch.int32) * weights).sum(dim=-1)  # < 2^23: no overflow
    return ((fixed + (1 << (_GRAY_SHIFT - 1))) >> _GRAY_SHIFT).to(torch.uint8)


def sobel_cam(img: np.ndarray) -> np.ndarray:
    """The Sobel edge map (H, W) uint8 of an RGB uint8 image (H, W, 3), as pytorch-grad-cam computes it.

    Equal to OpenCV's cvtColor(RGB2GRAY) -> Sobel(CV_64F, ksize=3) in x and y -> convertScaleAbs ->
    addWeighted(0.5, 0.5), computed with torch.
    """
    if not isinstance(img, np.ndarray):
        raise TypeError(f"img must be a numpy array (H, W, 3), got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be an RGB image of shape (H, W, 3), got {img.shape}")
    if img.dtype != np.uint8:
        raise TypeError(
            f"img must be uint8 (0..255), got {img.dtype}; convert a float image in [0, 1] with "
            "np.uint8(np.round(255 * img))"
        )
    gray = rgb_to_gray(torch.from_numpy(np.ascontiguousarray(img)))
    # float64 holds every intermediate exactly (|G| <= 4 * 255).
    grads = sobel_gradients(gray[None].to(torch.float64))[0].clamp(max=255)
    # torch.round rounds half to even, like OpenCV's cvRound in addWeighted.
    return torch.round(0.5 * grads[0] + 0.5 * grads[1]).to(torch.uint8).numpy()


class SobelCAM(BaseCAM, name="sobelcam"):
    """Sobel-CAM as a method: the edge map of the input tensor, scaled to [0, 1].

    Model-free: it runs no forward pass and ignores ``targets``, ``target_layers``,
    ``reshape_transform`` and ``eigen_smooth`` (``cam.layers`` is empty). ``target_layers`` is
    accepted so that SobelCAM is built like every method (``SobelCAM(model=model,
    target_layers=layers)``); ``model`` only tells the device. Inputs are 2-D image batches
    (B, C, H, W).
    """

    uses_gradients = False
    needs_targets = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[Sequence[nn.Module], nn.Module, None] = None,
        reshape_transform: Optional[Callable[..., torch.Tensor]] = None,
        **kwargs,
    ) -> None:
        if (target_layers is not None and len(list(target_layers)) > 0) or reshape_transform is not None:
            logger.info("SobelCAM ignores target_layers and reshape_transform: it explains the input image")
        super().__init__(model, None, **kwargs)
        # Nothing is explained at any layer: no default layer is inferred, none is hooked.
        self.target_layers = []
        self.inferred = Inferred()

    def ensure_layers(self, x: torch.Tensor) -> list:
        return []

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[Sequence[TargetLike]] = None,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
    ) -> np.ndarray:
        # Any non-None targets spare aug_smooth the model forward that would pick each image's class.
        return super().forward(input_tensor, () if targets is None else targets, eigen_smooth, aug_smooth=aug_smooth)

    def forward_tensor(
        self, x: torch.Tensor, targets: Optional[Sequence[TargetLike]], eigen_smooth: bool
    ) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"SobelCAM takes 2-D image batches (B, C, H, W), got an input of shape {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] == 3:
            luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device)
            gray = torch.einsum("bchw,c->bhw", x, luma)
        else:
            gray = x.mean(dim=1)
        grads = sobel_gradients(gray)
        return min_max_scale(0.5 * grads[:, 0] + 0.5 * grads[:, 1])
