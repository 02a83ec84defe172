"""Confidence metrics of the explanation map E = X * L (the image multiplied by the map).

Chattopadhyay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
Convolutional Networks", WACV 2018. https://arxiv.org/abs/1710.11063

With Y_i the model's score for image i's class on the image and O_i the same score on
E_i = X_i * L_i (the map in [0, 1] broadcast over channels):

    Average Drop (%)             = 100 / N * sum_i max(0, Y_i - O_i) / Y_i      (lower is better)
    Increase in Confidence (%)   = 100 / N * sum_i 1[Y_i < O_i]                 (higher is better)
    confidence change            = O_i - Y_i                                    (higher is better)

Each function returns the per-image term, (B,) on the model's device; average (and multiply by
100) over a data set to get the paper's numbers. The score is the softmax probability by default
(``score="logit"`` for the raw class score). Multiplying by the map replaces the removed parts
with zeros, so pass images in the units whose zero is "no information" for your model (for a
model that normalises internally, images in [0, 1]).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from pytorch_cam.metrics._common import (
    MapsLike,
    TargetsLike,
    check_images,
    check_maps,
    check_score,
    eval_mode,
    forward_scores,
    resolve_classes,
)


def masked_scores(
    model: nn.Module,
    images: torch.Tensor,
    maps: MapsLike,
    targets: TargetsLike = None,
    score: str = "probability",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Y, O): the class score on the images and on the images multiplied by the maps, each (B,)."""
    check_score(score)
    x = check_images(model, images)
    m = check_maps(maps, x)
    classes = resolve_classes(model, x, targets)
    with torch.no_grad(), eval_mode(model):
        both = forward_scores(model, torch.cat([x, x * m[:, None].to(x.dtype)]), classes.repeat(2), score)
    return both[: x.shape[0]], both[x.shape[0] :]


def average_drop(
    model: nn.Module, images: torch.Tensor, maps: MapsLike, targets: TargetsLike = None, score: str = "probability"
) -> torch.Tensor:
    """Per-image drop max(0, Y - O) / Y in [0, 1] (for probabilities); the mean x 100 is Average Drop."""
    y, o = masked_scores(model, images, maps, targets, score)
    return (y - o).clamp(min=0) / y.abs().clamp(min=1e-12)


def increase_in_confidence(
    model: nn.Module, images: torch.Tensor, maps: MapsLike, targets: TargetsLike = None, score: str = "probability"
) -> torch.Tensor:
    """Per-image indicator 1[Y < O] as float; the mean x 100 is the Increase in Confidence."""
    y, o = masked_scores(model, images, maps, targets, score)
    return (o > y).float()


def confidence_change(
    model: nn.Module, images: torch.Tensor, maps: MapsLike, targets: TargetsLike = None, score: str = "probability"
) -> torch.Tensor:
    """Per-image O - Y: how the class score changes when the image is multiplied by its map."""
    y, o = masked_scores(model, images, maps, targets, score)
    return o - y
