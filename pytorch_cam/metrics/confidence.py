"""Confidence metrics of the explanation map E = X * L (the image multiplied by the map).

Chattopadhyay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
Convolutional Networks", WACV 2018. https://arxiv.org/abs/1710.11063

With Y_i the model's score for image i's class on the image and O_i the same score on
E_i = X_i * L_i (the map in [0, 1] broadcast over channels):

    Average Drop (%)             = 100 / N * sum_i max(0, Y_i - O_i) / Y_i      (lower is better)
    Increase in Confidence (%)   = 100 / N * sum_i 1[Y_i < O_i]                 (higher is better)
    confidence change            = O_i - Y_i                                    (higher is better)

Each function returns the per-image term, (B,) float32 on the model's device; average (and
multiply by 100) over a data set to get the paper's numbers. The score is the softmax probability
by default (``score="logit"`` for the raw class score, ``score="target"`` for target callables).
``precision="bf16"`` (or ``"fp16"``) runs the forwards under autocast (see ``_common.Forward``).
Multiplying by the map replaces the removed parts with zeros, so pass images in the units whose
zero is "no information" for your model (for a model that normalises internally, images in [0, 1]).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from pytorch_cam.metrics._common import (
    Forward,
    MapsLike,
    TargetsLike,
    check_images,
    check_maps,
    check_score,
    eval_mode,
    forward_scores,
    resolve_scoring,
)


def masked_scores(
    model: nn.Module,
    images: torch.Tensor,
    maps: MapsLike,
    targets: TargetsLike = None,
    score: str = "probability",
    *,
    precision: str = "fp32",
    memory_format: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Y, O): the class score on the images and on the images multiplied by the maps, each (B,)
    float32, from one forward of both. ``precision`` / ``memory_format``: see ``_common.Forward``."""
    check_score(score)
    forward = Forward(model, precision, memory_format)
    x = check_images(model, images)
    m = check_maps(maps, x)
    n = x.shape[0]
    both_x = torch.cat([x, x * m[:, None].to(x.dtype)])
    rows = torch.arange(n, device=x.device).repeat(2)
    with eval_mode(model):
        classes, target_list = resolve_scoring(model, x, targets, score, forward)
        both = forward_scores(
            model, both_x, None if classes is None else classes[rows], score, forward, target_list, rows
        )
    return both[:n], both[n:]


def average_drop(
    model: nn.Module,
    images: torch.Tensor,
    maps: MapsLike,
    targets: TargetsLike = None,
    score: str = "probability",
    *,
    precision: str = "fp32",
    memory_format: str = "auto",
) -> torch.Tensor:
    """Per-image drop max(0, Y - O) / Y in [0, 1] (for probabilities); the mean x 100 is Average Drop."""
    y, o = masked_scores(model, images, maps, targets, score, precision=precision, memory_format=memory_format)
    return (y - o).clamp(min=0) / y.abs().clamp(min=1e-12)


def increase_in_confidence(
    model: nn.Module,
    images: torch.Tensor,
    maps: MapsLike,
    targets: TargetsLike = None,
    score: str = "probability",
    *,
    precision: str = "fp32",
    memory_format: str = "auto",
) -> torch.Tensor:
    """Per-image indicator 1[Y < O] as float; the mean x 100 is the Increase in Confidence."""
    y, o = masked_scores(model, images, maps, targets, score, precision=precision, memory_format=memory_format)
    return (o > y).float()


def confidence_change(
    model: nn.Module,
    images: torch.Tensor,
    maps: MapsLike,
    targets: TargetsLike = None,
    score: str = "probability",
    *,
    precision: str = "fp32",
    memory_format: str = "auto",
) -> torch.Tensor:
    """Per-image O - Y: how the class score changes when the image is multiplied by its map."""
    y, o = masked_scores(model, images, maps, targets, score, precision=precision, memory_format=memory_format)
    return o - y
