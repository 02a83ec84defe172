"""Deletion and insertion curves and their areas (AUC).

Petsiuk, Das and Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models",
BMVC 2018. https://arxiv.org/abs/1806.07421

Pixels are ordered by decreasing map value. With S steps, step k = 0..S has a fraction f_k = k/S
of the H*W pixels changed, the first round(f_k * H * W) in that order:

    deletion:   x_k = where(pixel among the first, baseline, x)       (baseline: 0, i.e. black)
    insertion:  x_k = where(pixel among the first, x, blur(x))        (start from a blurred copy)

p_k is the model's class probability on x_k, and the AUC is the trapezoid rule over f in [0, 1]:

    AUC = 1/S * sum_{k=1..S} (p_{k-1} + p_k) / 2

A faithful map makes the deletion curve fall fast (low deletion AUC) and the insertion curve
rise fast (high insertion AUC). All (image, step) pairs are scored in chunks of ``batch_size``
forward rows; ties in the map are broken in a seeded random order.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from pytorch_cam.metrics._common import (
    Forward,
    MapsLike,
    TargetsLike,
    check_batch_size,
    check_images,
    check_maps,
    check_score,
    gaussian_blur,
    pixel_ranks,
    resolve_scoring,
    score_rows,
)


def _curve(
    mode: str,
    model: nn.Module,
    images: torch.Tensor,
    maps: MapsLike,
    targets: TargetsLike,
    steps: int,
    baseline: Optional[torch.Tensor],
    batch_size: int,
    score: str,
    precision: str,
    memory_format: str,
) -> torch.Tensor:
    check_score(score)
    check_batch_size(batch_size)
    forward = Forward(model, precision, memory_format)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    x = check_images(model, images)
    m = check_maps(maps, x)
    classes, target_list = resolve_scoring(model, x, targets, score, forward)
    b, c, h, w = x.shape
    ranks = pixel_ranks(m)  # (B, HW)
    counts = torch.round(torch.linspace(0, h * w, steps + 1, device=x.device)).long()
    start_img = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    flat_x, flat_start = x.reshape(b, c, -1), start_img.reshape(b, c, -1)
    if mode == "insertion":
        flat_x, flat_start = flat_start, flat_x  # "changed" pixels show the image, the rest the blur

    def make_rows(lo: int, hi: int):
        rows = torch.arange(lo, hi, device=x.device)
        img, step = rows // (steps + 1), rows % (steps + 1)
        changed = (ranks[img] < counts[step][:, None])[:, None]  # (R, 1, HW)
        out = torch.where(changed, flat_start[img], flat_x[img])
        return out.reshape(-1, c, h, w), img

    scores = score_rows(model, make_rows, b * (steps + 1), classes, score, batch_size, forward, target_list, x.device)
    return scores.reshape(b, steps + 1)


def deletion_curve(
    model: nn.Module,
    images: torch.Tensor,
    maps: MapsLike,
    targets: TargetsLike = None,
    steps: int = 32,
    baseline: Union[float, torch.Tensor] = 0.0,
    batch_size: int = 256,
    score: str = "probability",
    *,
    precision: str = "fp32",
    memory_format: str = "auto",
) -> torch.Tensor:
    """(B, steps + 1) float32 class scores as the most relevant pixels are replaced by ``baseline``.

    ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``) and ``memory_format``: the forwards' (see
    ``pytorch_cam.metrics._common.Forward``)."""
    return _curve(
        "deletion", model, images, maps, targets, steps, baseline, batch_size, score, precision, memory_format
    )


def insertion_curve(
    model: nn.Module,
    images: torch.Tensor,
    maps: MapsLike,
    targets: TargetsLike = None,
    steps: int = 32,
    blur_sigma: float = 5.0,
    batch_size: int = 256,
    score: str = "probability",
    *,
    precision: str = "fp32",
    memory_format: str = "auto",
) -> torch.Tensor:
    """(B, steps + 1) float32 class scores as the most relevant pixels are copied into a blurred
    image; ``precision``, ``memory_format`` as in :func:`deletion_curve`."""
    x = check_images(model, images)
    blurred = gaussian_blur(x, blur_sigma)
    return _curve("insertion", model, x, maps, targets, steps, blurred, batch_size, score, precision, memory_format)


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under curves (B, S + 1) sampled uniformly on [0, 1] -> (B,)."""
    return ((curve[:, :-1] + curve[:, 1:]) / 2).mean(dim=1)


def deletion_auc(model: nn.Module, images: torch.Tensor, maps: MapsLike, targets: TargetsLike = None, **kwargs):
    """Per-image deletion AUC (B,) (lower is better); kwargs as in :func:`deletion_curve`."""
    return auc(deletion_curve(model, images, maps, targets, **kwargs))


def insertion_auc(model: nn.Module, images: torch.Tensor, maps: MapsLike, targets: TargetsLike = None, **kwargs):
    """Per-image insertion AUC (B,) (higher is better); kwargs as in :func:`insertion_curve`."""
    return auc(insertion_curve(model, images, maps, targets, **kwargs))
