"""Shared plumbing of the metrics: input checks, target resolution and batched scoring."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_cam.base_cam import model_device, resize_maps
from pytorch_cam.utils.model_state import eval_mode  # noqa: F401  (the metrics modules import it from here)

MapsLike = Union[torch.Tensor, np.ndarray]
TargetsLike = Union[None, torch.Tensor, np.ndarray, Sequence]

SCORES = ("probability", "logit")


def check_images(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(images) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"images must be a float tensor of shape (B, C, H, W), got {shape}")
    return images.detach().to(model_device(model))


def as_maps(maps: MapsLike, at_most_one: bool = True) -> torch.Tensor:
    """Maps as a float32 tensor, checked to be what every CAM returns: finite floats in [0, 1].

    ``at_most_one=False`` admits any non-negative scale (the localisation metrics are scale-free).
    """
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(np.ascontiguousarray(maps))
    if not torch.is_tensor(maps):
        raise TypeError(f"maps must be a tensor or numpy array of shape (B, H, W), got {type(maps).__name__}")
    if not maps.is_floating_point():
        hint = " (an 8-bit image of a map: divide it by 255)" if maps.dtype == torch.uint8 else ""
        raise TypeError(f"maps must be floats in [0, 1] like a CAM's output, got dtype {maps.dtype}{hint}")
    maps = maps.detach().float()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or Inf values; clean them (e.g. torch.nan_to_num) first")
    if maps.numel():
        lo, hi = float(maps.min()), float(maps.max())
        if lo < -1e-6 or (at_most_one and hi > 1 + 1e-6):
            want = "in [0, 1] like a CAM's output" if at_most_one else "non-negative maps"
            raise ValueError(
                f"the metrics need {want}, got values in [{lo:.3g}, {hi:.3g}]; scale each map first, "
                "e.g. with pytorch_cam.base_cam.min_max_scale"
            )
    return maps


def check_maps(maps: MapsLike, images: torch.Tensor) -> torch.Tensor:
    """Maps as a float tensor (B, H, W) on the images' device, resized to the images if needed."""
    maps = as_maps(maps)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"maps must have shape (B, H, W) with B={images.shape[0]} (one map per image), got {tuple(maps.shape)}"
        )
    return resize_maps(maps.to(images.device), images.shape[2:])


def check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def forward_scores(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, score: str) -> torch.Tensor:
    """Score of ``classes[j]`` for row ``j`` of ``x``: softmax probability or raw logit."""
    out = model(x)
    if not torch.is_tensor(out) or out.ndim != 2:
        raise ValueError(
            "the metrics need a classifier that returns (B, classes) logits; "
            f"this model returned {tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}"
        )
    if score == "probability":
        out = F.softmax(out.float(), dim=1)
    return out.gather(1, classes[:, None])[:, 0].float()


def resolve_classes(model: nn.Module, images: torch.Tensor, targets: TargetsLike) -> torch.Tensor:
    """Class index per image (B,) long: given ints / ClassifierOutputTarget, or the top class."""
    n = images.shape[0]
    if targets is None:
        with torch.no_grad(), eval_mode(model):
            out = model(images)
        return out.argmax(dim=1)
    if isinstance(targets, np.ndarray):
        targets = torch.from_numpy(targets)
    if torch.is_tensor(targets):
        classes = targets.reshape(-1).long()
    else:
        values = []
        for t in targets:
            if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
                values.append(int(t))
            elif hasattr(t, "category") and isinstance(t.category, (int, np.integer)):
                values.append(int(t.category))
            else:
                raise TypeError(
                    f"metric targets must be class indices or ClassifierOutputTarget, got {t!r}; "
                    "the confidence metrics score one class per image"
                )
        classes = torch.tensor(values, dtype=torch.long)
    if classes.numel() != n:
        raise ValueError(f"got {classes.numel()} targets for {n} images; pass one class per image or targets=None")
    with torch.no_grad(), eval_mode(model):
        out = model(images[:1])
    if not torch.is_tensor(out) or out.ndim != 2:
        return classes.to(images.device)  # forward_scores names the problem with the output
    n_classes = out.shape[1]
    if bool(((classes < -n_classes) | (classes >= n_classes)).any()):
        raise IndexError(
            f"target classes {classes.tolist()} include one outside the model output, which has {n_classes} "
            f"classes (valid: {-n_classes}..{n_classes - 1}, negative ones counted from the end as in Python)"
        )
    return (classes % n_classes).to(images.device)


def score_rows(
    model: nn.Module,
    make_rows,
    rows: int,
    classes: torch.Tensor,
    score: str,
    batch_size: int,
) -> torch.Tensor:
    """Score ``rows`` perturbed inputs built chunk by chunk: ``make_rows(start, stop)`` returns
    (inputs, image index per row). Returns (rows,) scores, so memory stays bounded."""
    out = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, rows, batch_size):
            x, image_index = make_rows(start, min(rows, start + batch_size))
            out.append(forward_scores(model, x, classes[image_index], score))
    return torch.cat(out) if out else torch.zeros(0, device=classes.device)


def pixel_ranks(maps: torch.Tensor, descending: bool = True, seed: int = 0) -> torch.Tensor:
    """(B, H*W) rank of every pixel when sorted by map value (0 = first).

    Ties (e.g. the flat inside of a binary mask) are broken in a seeded random order: raster
    order would remove whole rows from the top, which biases the curves and, for ROAD, leaves one
    huge hole for the imputation.
    """
    flat = maps.reshape(maps.shape[0], -1)
    g = torch.Generator(device=flat.device).manual_seed(seed)
    shuffle = torch.argsort(torch.rand(flat.shape, generator=g, device=flat.device), dim=1)
    order = torch.argsort(flat.gather(1, shuffle), dim=1, descending=descending, stable=True)
    order = shuffle.gather(1, order)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (kernel radius 3 sigma, capped by the image)."""
    if sigma <= 0:
        return images
    h, w = images.shape[-2:]
    radius = max(1, min(int(3 * sigma + 0.5), min(h, w) - 1))
    t = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(images.dtype)
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
