"""ROAD: RemOve And Debias, with noisy linear imputation.

Rong, Leemann, Borisov, Kasneci and Kasneci, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022. https://arxiv.org/abs/2202.00449

For a percentile p, the p% of pixels ranked most relevant by the map (MoRF) — or least relevant
(LeRF) — are removed and re-imputed so that the removal leaks no information through its shape.
Noisy linear imputation sets every removed pixel to the weighted average of its 8 neighbours
(weight 1/6 for the 4 direct ones, 1/12 for the diagonals; renormalised at the image border):

    W_i x_i - sum_{j in N(i)} w_ij x_j = 0     for every removed pixel i, per channel,

with the kept pixels fixed, then adds Gaussian noise N(0, sigma^2) to the removed pixels only.
The system is symmetric positive definite (each connected hole touches a kept pixel), so we solve
it with batched conjugate gradients on the image grid (a 3x3 stencil per iteration), in torch
on the model's device, for all (image, percentile) pairs at once.

The score is the model's class probability on the imputed image. A faithful map gives a low
MoRF curve (removing what it points at hurts) and a high LeRF curve (removing what it ignores
does not); ``road_score`` summarises both as mean_p(LeRF_p - MoRF_p), higher is better.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pytorch_cam.metrics._common import (
    MapsLike,
    TargetsLike,
    check_batch_size,
    check_images,
    check_maps,
    check_score,
    pixel_ranks,
    resolve_classes,
    score_rows,
)

DEFAULT_PERCENTILES: Tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def _neighbour_sum(v: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij v_j over the 8 neighbours (zero outside the image), for (N, H, W).

    Shifted slices rather than a 3x3 conv2d: a single-channel convolution is several times
    slower on CPU than these few element-wise adds.
    """
    p = F.pad(v, (1, 1, 1, 1))
    side = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]
    corner = p[:, :-2, :-2] + p[:, :-2, 2:] + p[:, 2:, :-2] + p[:, 2:, 2:]
    return side / 6.0 + corner / 12.0


def noisy_linear_impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    generator: Optional[torch.Generator] = None,
    tol: float = 1e-4,
    max_iter: int = 500,
) -> torch.Tensor:
    """Fill the ``removed`` pixels (B, H, W) bool of ``images`` (B, C, H, W) by noisy linear imputation.

    Kept pixels are returned unchanged. ``noise`` is the standard deviation of the Gaussian noise
    added to the imputed pixels, in the images' units. ``tol`` bounds every system's relative
    residual ||b - A x|| / ||b|| (1e-4 is far below the default noise; float32 cannot go much lower).
    """
    if removed.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"removed must have shape (B, H, W) = {(images.shape[0], *images.shape[2:])}")
    b, c, h, w = images.shape
    dtype = torch.float32
    x_known = images.to(dtype).reshape(b * c, h, w)
    u = removed.to(dtype).repeat_interleave(c, dim=0)  # (B*C, H, W), 1 = unknown
    wsum = _neighbour_sum(torch.ones(1, h, w, device=images.device, dtype=dtype))  # < 1 at the border

    def apply_a(v: torch.Tensor) -> torch.Tensor:
        return u * (wsum * v - _neighbour_sum(v))

    rhs = u * _neighbour_sum(x_known * (1 - u))
    # Start from the mean of the kept pixels: CG then only has to move the holes' interior.
    kept = (1 - u).sum(dim=(1, 2), keepdim=True).clamp(min=1)
    sol = u * ((x_known * (1 - u)).sum(dim=(1, 2), keepdim=True) / kept)
    r = rhs - apply_a(sol)
    p = r.clone()
    rs = (r * r).sum(dim=(1, 2), keepdim=True)
    target = (tol**2) * (rhs * rhs).sum(dim=(1, 2), keepdim=True).clamp(min=1e-20)
    for it in range(max_iter):
        if it % 10 == 0 and not bool((rs > target).any()):  # one sync every 10 iterations
            break
        ap = apply_a(p)
        denom = (p * ap).sum(dim=(1, 2), keepdim=True)
        alpha = torch.where(denom > 0, rs / denom.clamp(min=1e-30), torch.zeros_like(denom))
        sol = sol + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(dim=(1, 2), keepdim=True)
        beta = torch.where(rs > 0, rs_new / rs.clamp(min=1e-30), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    filled = x_known * (1 - u) + u * sol
    if noise > 0:
        filled = filled + u * noise * torch.randn(filled.shape, generator=generator, device=filled.device, dtype=dtype)
    return filled.reshape(b, c, h, w).to(images.dtype)


def road_curve(
    model: nn.Module,
    images: torch.Tensor,
    maps: MapsLike,
    targets: TargetsLike = None,
    order: str = "morf",
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = 128,
    score: str = "probability",
) -> torch.Tensor:
    """(B, P) class scores after removing ``percentiles`` % of pixels, most (``"morf"``) or least
    (``"lerf"``) relevant first, and imputing them. ``seed`` makes the imputation noise reproducible."""
    check_score(score)
    check_batch_size(batch_size)
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}")
    pct = torch.as_tensor(list(percentiles), dtype=torch.float64)
    if pct.ndim != 1 or pct.numel() == 0 or bool(((pct <= 0) | (pct >= 100)).any()):
        raise ValueError(f"percentiles must be values strictly between 0 and 100, got {list(percentiles)}")
    x = check_images(model, images)
    m = check_maps(maps, x)
    classes = resolve_classes(model, x, targets)
    b, c, h, w = x.shape
    ranks = pixel_ranks(m, descending=(order == "morf"))
    counts = torch.round(pct * h * w / 100).long().to(x.device)
    n_p = counts.numel()
    generator = torch.Generator(device=x.device).manual_seed(seed)

    def make_rows(lo: int, hi: int):
        rows = torch.arange(lo, hi, device=x.device)
        img, k = rows // n_p, rows % n_p
        removed = (ranks[img] < counts[k][:, None]).reshape(-1, h, w)
        return noisy_linear_impute(x[img], removed, noise=noise, generator=generator), img

    return score_rows(model, make_rows, b * n_p, classes, score, batch_size).reshape(b, n_p)


def road_score(
    model: nn.Module, images: torch.Tensor, maps: MapsLike, targets: TargetsLike = None, **kwargs
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(combined, MoRF, LeRF) per image, each (B,): the curves' means over the percentiles and
    combined = LeRF - MoRF (higher is better). kwargs as in :func:`road_curve`."""
    if "order" in kwargs:
        raise TypeError("road_score computes both orders; do not pass order=")
    morf = road_curve(model, images, maps, targets, order="morf", **kwargs).mean(dim=1)
    lerf = road_curve(model, images, maps, targets, order="lerf", **kwargs).mean(dim=1)
    return lerf - morf, morf, lerf
