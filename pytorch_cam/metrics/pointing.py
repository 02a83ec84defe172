"""Pointing game and energy-based pointing game against ground-truth masks or boxes.

Pointing game: Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016
(https://arxiv.org/abs/1608.00507). A map scores a hit when its maximum lies on the object:

    hit_i = 1[argmax_p L_i(p) in dilate(M_i, tolerance)]

(the first maximal pixel in raster order, so a flat map does not hit everywhere at once;
``tolerance`` pixels of square dilation, Zhang et al. use 15 px at 224 px). Accuracy = mean hit.

Energy-based pointing game: Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
Convolutional Neural Networks", CVPR Workshops 2020 (https://arxiv.org/abs/1910.01279). The
share of the map's energy that falls on the object:

    proportion_i = sum_p L_i(p) M_i(p) / sum_p L_i(p)        (0 for an all-zero map)

Both take maps (B, H, W) >= 0 and either boolean masks (B, H, W) or boxes (B, 4) as
(x0, y0, x1, y1) pixel coordinates, end-exclusive; higher is better for both.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from pytorch_cam.metrics._common import MapsLike, as_maps

RegionLike = Union[torch.Tensor, np.ndarray]


def boxes_to_masks(boxes: RegionLike, size: Sequence[int]) -> torch.Tensor:
    """Boxes (B, 4) as (x0, y0, x1, y1), end-exclusive pixel coordinates -> bool masks (B, H, W)."""
    boxes = torch.as_tensor(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    h, w = size
    ys = torch.arange(h, device=boxes.device)[None, :, None]
    xs = torch.arange(w, device=boxes.device)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def _maps_and_regions(maps: MapsLike, regions: RegionLike):
    maps = as_maps(maps, at_most_one=False)
    if isinstance(regions, (list, tuple)):
        regions = np.asarray([r.detach().cpu().numpy() if torch.is_tensor(r) else np.asarray(r) for r in regions])
    if isinstance(regions, np.ndarray):
        regions = torch.from_numpy(np.ascontiguousarray(regions))
    if not torch.is_tensor(regions):
        raise TypeError(
            f"regions must be boolean masks (B, H, W) or boxes (B, 4) as a tensor, array or list, got "
            f"{type(regions).__name__}"
        )
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (B, H, W), got {tuple(maps.shape)}")
    if regions.ndim == 2:
        regions = boxes_to_masks(regions, maps.shape[1:])
    if regions.shape != maps.shape:
        raise ValueError(
            f"ground truth must be masks shaped like the maps {tuple(maps.shape)} or boxes (B, 4); "
            f"got {tuple(regions.shape)}"
        )
    return maps, regions.to(device=maps.device, dtype=torch.bool)


def pointing_game(maps: MapsLike, regions: RegionLike, tolerance: int = 0) -> torch.Tensor:
    """Per-image hit (B,) float in {0, 1}: the map's maximum lies on the (dilated) object."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative int number of pixels, got {tolerance!r}")
    maps, masks = _maps_and_regions(maps, regions)
    if tolerance > 0:
        k = 2 * tolerance + 1
        masks = F.max_pool2d(masks[:, None].float(), k, stride=1, padding=tolerance)[:, 0] > 0
    peak = maps.reshape(maps.shape[0], -1).argmax(dim=1)
    return masks.reshape(masks.shape[0], -1).gather(1, peak[:, None])[:, 0].float()


def energy_pointing_game(maps: MapsLike, regions: RegionLike) -> torch.Tensor:
    """Per-image share (B,) in [0, 1] of the map's total value that lies on the object."""
    maps, masks = _maps_and_regions(maps, regions)
    if bool((maps < 0).any()):
        raise ValueError("energy_pointing_game needs non-negative maps (CAMs in [0, 1]); apply relu or min-max first")
    total = maps.sum(dim=(1, 2))
    inside = (maps * masks).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total))
