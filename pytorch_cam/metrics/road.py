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
on the model's device, for all (image, percentile) pairs at once; each system leaves the batch
once it has converged.

The score is the model's class probability on the imputed image. A faithful map gives a low
MoRF curve (removing what it points at hurts) and a high LeRF curve (removing what it ignores
does not); ``road_score`` summarises both as mean_p(LeRF_p - MoRF_p), higher is better.

pytorch-grad-cam's classes (``ROADMostRelevantFirst``, ``ROADLeastRelevantFirst``, their
``...Average`` over percentiles, ``ROADCombined``, ``NoisyLinearImputer``) are at the end of this
module: front-ends over ``road_curve`` with that library's conventions (a percentile names the
map value at which to cut, target callables, numpy results of score changes), batched.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_cam.metrics._common import (
    Forward,
    MapsLike,
    TargetsLike,
    check_batch_size,
    check_images,
    check_maps,
    check_score,
    percentile_list,
    pixel_ranks,
    resolve_scoring,
    score_rows,
)

DEFAULT_PERCENTILES: Tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)


#: the neighbour weights of the imputation, ((dy, dx), weight): 1/6 for the 4 direct neighbours, 1/12
#: for the diagonals (Rong et al.); pytorch-grad-cam's name for the same table is ``neighbors_weights``
#: (listed in that library's order, so that the defaults compare equal)
NEIGHBOUR_WEIGHTS: Tuple[Tuple[Tuple[int, int], float], ...] = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)
neighbors_weights = list(NEIGHBOUR_WEIGHTS)


def _check_weights(weights) -> Optional[Tuple[Tuple[Tuple[int, int], float], ...]]:
    """``weights`` as a tuple, or None for the default table (which has a faster separable stencil)."""
    if weights is None:
        return None
    try:
        table = tuple(((int(o[0]), int(o[1])), float(w)) for o, w in weights)
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"weights must be a list of ((dy, dx), weight) pairs, got {weights!r}") from exc
    lookup = dict(table)
    if any(w <= 0 or d == (0, 0) for d, w in table) or any(lookup.get((-dy, -dx)) != w for (dy, dx), w in table):
        raise ValueError(
            "the imputation weights must be positive, exclude the pixel itself (offset (0, 0)), and be "
            "symmetric (weight of (dy, dx) == weight of (-dy, -dx)), so that the system stays symmetric "
            f"positive definite for the conjugate-gradient solve; got {weights!r}"
        )
    if sorted(table) == sorted(NEIGHBOUR_WEIGHTS):
        return None
    return table


def _box121(v: torch.Tensor, tmp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` = v convolved with [1, 2, 1] x [1, 2, 1] (zero outside the image), for (N, H, W).

    The default neighbour sum is (box121(v) - 4 v) / 12. Two separable passes of in-place shifted
    adds into preallocated buffers: several times faster on a CPU than a single-channel conv2d or
    than summing eight padded slices, and no allocation per conjugate-gradient iteration.
    """
    torch.mul(v, 2, out=tmp)
    tmp[:, 1:] += v[:, :-1]
    tmp[:, :-1] += v[:, 1:]
    torch.mul(tmp, 2, out=out)
    out[:, :, 1:] += tmp[:, :, :-1]
    out[:, :, :-1] += tmp[:, :, 1:]
    return out


def _weighted_neighbour_sum(v: torch.Tensor, table) -> torch.Tensor:
    """sum_d w_d v(p + d) over the offsets of ``table`` (zero outside the image), for (N, H, W)."""
    h, w = v.shape[-2:]
    r = max(max(abs(dy), abs(dx)) for (dy, dx), _ in table)
    p = F.pad(v, (r, r, r, r))
    out = torch.zeros_like(v)
    for (dy, dx), wt in table:
        if abs(dy) < h and abs(dx) < w:
            out += wt * p[:, r + dy : r + dy + h, r + dx : r + dx + w]
    return out


def noisy_linear_impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    generator: Optional[torch.Generator] = None,
    tol: float = 1e-5,
    max_iter: int = 2000,
    weights: Optional[Sequence] = None,
) -> torch.Tensor:
    """Fill the ``removed`` pixels (B, H, W) bool of ``images`` (B, C, H, W) by noisy linear imputation.

    Kept pixels are returned unchanged. ``noise`` is the standard deviation of the Gaussian noise
    added to the imputed pixels, in the images' units (``generator=None``: torch's global one).
    Each (image, channel) system is solved by conjugate gradients until its relative residual
    ||b - A x|| / ||b|| is below ``tol`` and then leaves the batch, so one large hole does not keep
    the easy systems iterating. ``tol=1e-5`` leaves imputed values within ~3e-4 of a direct sparse
    solve on the scenes (at 64x64), 30x below the default noise. ``weights``: the neighbour table,
    ((dy, dx), weight) pairs, symmetric (default ``NEIGHBOUR_WEIGHTS``).
    """
    if removed.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"removed must have shape (B, H, W) = {(images.shape[0], *images.shape[2:])}, got {tuple(removed.shape)}"
        )
    table = _check_weights(weights)
    b, c, h, w = images.shape
    n = b * c
    dtype = torch.float32
    x = images.to(dtype).reshape(n, h, w)
    u = removed.to(device=x.device, dtype=dtype).repeat_interleave(c, dim=0)  # (B*C, H, W), 1 = unknown
    known = x * (1 - u)
    tmp, box = torch.empty_like(x), torch.empty_like(x)
    # The operator A v = diag v - scale nsum(v): only the neighbour sum and the two weights differ.
    if table is None:
        # N(v) = (box121(v) - 4 v) / 12, so A v = u (wsum v - N(v)) = diag v - (u / 12) box121(v)
        nsum = _box121
        wsum = (_box121(torch.ones_like(x[:1]), tmp[:1], box[:1]) - 4) / 12  # < 1 at the border
        diag, scale = u * (wsum + 1 / 3), u / 12
    else:

        def nsum(v: torch.Tensor, tmp: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
            return _weighted_neighbour_sum(v, table)

        diag, scale = u * _weighted_neighbour_sum(torch.ones_like(x[:1]), table), u

    def apply_a(v: torch.Tensor, out: torch.Tensor, diag, scale, tmp, box) -> torch.Tensor:
        torch.mul(diag, v, out=out)
        return out.addcmul_(scale, nsum(v, tmp, box), value=-1)

    rhs = scale * nsum(known, tmp, box)  # u N(known) (default table: the 4 known term is 0 where u = 1)

    def dot(a: torch.Tensor, b_: torch.Tensor) -> torch.Tensor:  # per system, (N, 1, 1), without a temporary
        return torch.bmm(a.reshape(a.shape[0], 1, -1), b_.reshape(b_.shape[0], -1, 1))

    # Start from the mean of the kept pixels: CG then only has to move the holes' interior.
    kept = (1 - u).sum(dim=(1, 2), keepdim=True).clamp(min=1)
    solution = u * (known.sum(dim=(1, 2), keepdim=True) / kept)
    sol = solution.clone()
    ap = torch.empty_like(x)
    r = rhs - apply_a(sol, ap, diag, scale, tmp, box)
    p = r.clone()
    rs = dot(r, r)
    target = (tol**2) * dot(rhs, rhs).clamp(min=1e-20)
    index = torch.arange(n, device=x.device)  # which system each row of the working set is
    for it in range(max_iter):
        if it % 10 == 0:  # one sync every 10 iterations
            active = (rs > target).reshape(-1)
            if not bool(active.any()):
                break
            if not bool(active.all()):  # retire the converged systems
                solution[index] = sol
                keep = active.nonzero()[:, 0]
                index, sol, r, p, rs, target = index[keep], sol[keep], r[keep], p[keep], rs[keep], target[keep]
                diag, scale, tmp, box, ap = diag[keep], scale[keep], tmp[keep], box[keep], ap[keep]
        apply_a(p, ap, diag, scale, tmp, box)
        alpha = rs / dot(p, ap).clamp(min=1e-30)
        sol.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        rs_new = dot(r, r)
        p.mul_(rs_new / rs.clamp(min=1e-30)).add_(r)
        rs = rs_new
    solution[index] = sol
    filled = known + u * solution
    if noise > 0:
        filled = filled + u * noise * torch.randn(filled.shape, generator=generator, device=filled.device, dtype=dtype)
    return filled.reshape(b, c, h, w).to(images.dtype)


def percentile_thresholds(values: torch.Tensor, percentiles: Sequence[float]) -> torch.Tensor:
    """(B, P): the ``percentiles`` of each row of ``values`` (B, N), as ``numpy.percentile`` computes them.

    Linear interpolation between the order statistics at (N - 1) q, q = p / 100, done the way numpy
    does it for a float32 array and a Python-number percentile (the weight in float64, the blend
    a + (b - a) t in float32, from the upper end when t >= 0.5), so a pixel lying exactly on the
    threshold is classified the same way as by pytorch-grad-cam.
    """
    ordered = values.sort(dim=1).values
    n = ordered.shape[1]
    out = []
    for pct in percentiles:
        virtual = (n - 1) * (float(pct) / 100)
        lo = min(int(math.floor(virtual)), n - 1)
        hi = min(lo + 1, n - 1)
        t = virtual - lo
        a, b = ordered[:, lo], ordered[:, hi]
        diff = b - a
        if t >= 0.5:
            out.append(b - diff * torch.tensor(1 - t, dtype=values.dtype, device=values.device))
        else:
            out.append(a + diff * torch.tensor(t, dtype=values.dtype, device=values.device))
    return torch.stack(out, dim=1)


def otsu_thresholds(levels: torch.Tensor) -> torch.Tensor:
    """(B,) Otsu's threshold of each row of 8-bit ``levels`` (B, N) (integers 0..255).

    Otsu, "A Threshold Selection Method from Gray-Level Histograms", IEEE SMC 1979: the level t
    maximising the between-class variance w0 w1 (mu0 - mu1)^2 of {<= t} and {> t}, the first such
    level on ties, skipping splits that leave a class (almost) empty -- the rule of OpenCV's
    ``THRESH_OTSU``; a flat row gets 0.
    """
    b = levels.shape[0]
    hist = torch.zeros(b, 256, dtype=torch.float64, device=levels.device)
    hist.scatter_add_(1, levels.long(), torch.ones(levels.shape, dtype=torch.float64, device=levels.device))
    prob = hist / levels.shape[1]
    grey = torch.arange(256, dtype=torch.float64, device=levels.device)
    q1 = prob.cumsum(dim=1)
    m1 = (prob * grey).cumsum(dim=1)
    q2 = 1 - q1
    mu = m1[:, -1:]
    eps = float(torch.finfo(torch.float32).eps)
    valid = (torch.minimum(q1, q2) >= eps) & (torch.maximum(q1, q2) <= 1 - eps)
    mu1 = m1 / q1.clamp(min=eps)
    mu2 = (mu - q1 * mu1) / q2.clamp(min=eps)
    sigma = torch.where(valid, q1 * q2 * (mu1 - mu2) ** 2, torch.zeros_like(q1))
    return sigma.argmax(dim=1)


def removal(maps: torch.Tensor, order: str, percentiles: Sequence, ties: str = "random", seed: int = 0):
    """``removed(image_index, column)`` -> (R, H, W) bool: the pixels ROAD removes for each (image,
    percentile) row, from maps (B, H, W). See :func:`road_curve` for ``ties`` and ``"auto"``."""
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}")
    if ties not in ("random", "all"):
        raise ValueError(f"ties must be 'random' (exact pixel counts) or 'all' (percentile threshold), got {ties!r}")
    values = percentile_list(percentiles)
    b, h, w = maps.shape
    device = maps.device
    flat = maps.reshape(b, -1)
    relevance = flat if order == "morf" else 1 - flat  # float32, as pytorch-grad-cam's 1 - mask
    is_auto = torch.tensor([p == "auto" for p in values], device=device)
    any_auto = bool(is_auto.any())
    numbers = [100.0 if p == "auto" else float(p) for p in values]
    if any_auto:
        levels = (relevance * 255).to(torch.uint8)  # truncation, as numpy's uint8 cast
        otsu = otsu_thresholds(levels)
    if ties == "random":
        ranks = pixel_ranks(maps, descending=(order == "morf"), seed=seed)
        counts = torch.round(torch.tensor(numbers, dtype=torch.float64) * h * w / 100).long().to(device)
    else:
        # remove p % = every pixel at or above the (100 - p)-th percentile of the relevance
        cuts = percentile_thresholds(relevance, [100 - p for p in numbers])

    def removed(img: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        if ties == "random":
            out = ranks[img] < counts[col][:, None]
        else:
            out = relevance[img] >= cuts[img, col][:, None]
        if any_auto:
            out = torch.where(is_auto[col][:, None], levels[img] > otsu[img][:, None], out)
        return out.reshape(-1, h, w)

    return removed


def road_curve(
    model: nn.Module,
    images: torch.Tensor,
    maps: MapsLike,
    targets: TargetsLike = None,
    order: str = "morf",
    percentiles: Sequence[Union[float, str]] = DEFAULT_PERCENTILES,
    noise: float = 0.01,
    seed: Optional[int] = 0,
    batch_size: int = 128,
    score: str = "probability",
    *,
    ties: str = "random",
    imputer: Optional[Callable[[torch.Tensor, torch.Tensor, Optional[torch.Generator]], torch.Tensor]] = None,
    precision: str = "fp32",
    memory_format: str = "auto",
    return_images: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """(B, P) float32 class scores after removing ``percentiles`` % of pixels, most (``"morf"``) or
    least (``"lerf"``) relevant first, and imputing them.

    Args:
        targets: class indices / ``ClassifierOutputTarget`` per image (None: the top class); with
            ``score="target"``, any target callables, each applied to its image's output rows.
        percentiles: the percentages to remove; ``"auto"`` removes the pixels above Otsu's
            threshold of the 8-bit relevance (the map for MoRF, 1 - map for LeRF).
        noise: the imputation noise's standard deviation; seed: its seed (None: torch's global
            generator). Ties in the map are broken in a fixed random order (seed 0).
        ties: ``"random"`` removes exactly round(p / 100 * H * W) pixels, ties in a seeded random
            order; ``"all"`` removes every pixel whose relevance is at or above the (100 - p)-th
            percentile of the image's relevance (``numpy.percentile``), so tied pixels go together
            (pytorch-grad-cam's rule).
        imputer: ``imputer(images (R, C, H, W), removed (R, H, W) bool, generator)`` -> imputed
            images, replacing :func:`noisy_linear_impute` with ``noise`` (then ignored).
        precision: ``"fp32"`` (exact), ``"bf16"`` or ``"fp16"`` for the model's forwards (autocast;
            the imputation stays float32); memory_format: the forwards' input layout (``"auto"``:
            channels-last for reduced precision on a convolutional model, see ``_common.Forward``).
        return_images: also return the imputed images, (B, P, C, H, W).
    """
    check_score(score)
    check_batch_size(batch_size)
    forward = Forward(model, precision, memory_format)
    x = check_images(model, images)
    m = check_maps(maps, x)
    removed = removal(m, order, percentiles, ties)
    classes, target_list = resolve_scoring(model, x, targets, score, forward)
    b, c, h, w = x.shape
    n_p = len(percentile_list(percentiles))
    generator = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    if imputer is None:

        def imputer(img: torch.Tensor, holes: torch.Tensor, gen: Optional[torch.Generator]) -> torch.Tensor:
            return noisy_linear_impute(img, holes, noise=noise, generator=gen)

    kept = []

    def make_rows(lo: int, hi: int):
        rows = torch.arange(lo, hi, device=x.device)
        img, k = rows // n_p, rows % n_p
        filled = imputer(x[img], removed(img, k), generator)
        if return_images:
            kept.append(filled)
        return filled, img

    scores = score_rows(model, make_rows, b * n_p, classes, score, batch_size, forward, target_list, x.device)
    curve = scores.reshape(b, n_p)
    if return_images:
        return curve, torch.cat(kept).reshape(b, n_p, c, h, w)
    return curve


def road_score(
    model: nn.Module, images: torch.Tensor, maps: MapsLike, targets: TargetsLike = None, **kwargs
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(combined, MoRF, LeRF) per image, each (B,): the curves' means over the percentiles and
    combined = LeRF - MoRF (higher is better). kwargs as in :func:`road_curve`."""
    if "order" in kwargs:
        raise TypeError("road_score computes both orders; do not pass order=")
    if kwargs.get("return_images"):
        raise TypeError("road_score returns scores only; call road_curve(..., return_images=True) for the images")
    morf = road_curve(model, images, maps, targets, order="morf", **kwargs).mean(dim=1)
    lerf = road_curve(model, images, maps, targets, order="lerf", **kwargs).mean(dim=1)
    return lerf - morf, morf, lerf


# ---------------------------------------------------------------- pytorch-grad-cam's ROAD classes
# They subclass the perturbation-confidence classes, which import this module only inside their
# methods, so this import is not circular.
from pytorch_cam.metrics.perturbation_confidence import (  # noqa: E402
    DEFAULT_PERCENTILES_LIST,
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)


class NoisyLinearImputer:
    """Noisy linear imputation as an object: pytorch-grad-cam's interface to :func:`noisy_linear_impute`.

    ``imputer(image (C, H, W), mask (H, W))`` fills the pixels where ``mask == 0`` and returns the
    image; ``imputer.impute(images, removed, generator)`` does a batch (``removed`` True = fill);
    ``setup_sparse_system`` returns the linear system as a torch sparse matrix, for inspection.
    ``noise``: the noise's standard deviation (torch's global generator unless one is given);
    ``weighting``: the neighbour table, ((dy, dx), weight) pairs (pytorch-grad-cam 1.5.7 accepts
    and ignores it; we use it). ``tol``, ``max_iter``: the conjugate-gradient solve's.
    """

    batched = True

    def __init__(
        self,
        noise: float = 0.01,
        weighting: Sequence = neighbors_weights,
        *,
        tol: float = 1e-5,
        max_iter: int = 2000,
    ) -> None:
        _check_weights(weighting)
        self.noise = noise
        self.weighting = weighting
        self.tol = tol
        self.max_iter = max_iter

    @staticmethod
    def add_offset_to_indices(indices, offset: Tuple[int, int], mask_shape: Tuple[int, int]):
        """(in-bounds flags, shifted indices): flat raster ``indices`` of an (H, W) grid moved by ``offset``
        (dy, dx); a shift that leaves the grid is flagged False (its index is then meaningless)."""
        indices = np.asarray(indices)
        h, w = int(mask_shape[0]), int(mask_shape[1])
        row, col = indices // w + offset[0], indices % w + offset[1]
        valid = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        return valid, indices + offset[0] * w + offset[1]

    @staticmethod
    def setup_sparse_system(mask, img, neighbors_weights: Sequence = neighbors_weights):
        """The imputation's linear system for one image, for inspection (our solver is matrix-free).

        ``mask`` (H, W): 0 where to impute; ``img`` (C, H, W). Returns (A, b), float64 tensors: A (N, N)
        sparse COO and b (N, C) dense, over the N pixels to impute in raster order, with
        A_ii = -W_i (the summed weights of in-image neighbours), A_ij = w_ij for an imputed neighbour j,
        and b_i = -sum of w_ij x_j over the known neighbours (pytorch-grad-cam's sign convention).
        """
        mask = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask)
        image = np.asarray(img.cpu() if torch.is_tensor(img) else img, dtype=np.float64)
        h, w = mask.shape
        flat_known = mask.reshape(-1) != 0
        flat_img = image.reshape(image.shape[0], -1)
        unknown = np.flatnonzero(~flat_known)
        number = -np.ones(h * w, dtype=np.int64)
        number[unknown] = np.arange(unknown.size)
        rows, cols, vals = [], [], []
        b = np.zeros((unknown.size, image.shape[0]))
        diag = np.zeros(unknown.size)
        for offset, weight in neighbors_weights:
            valid, moved = NoisyLinearImputer.add_offset_to_indices(unknown, offset, (h, w))
            eq, nb = np.flatnonzero(valid), moved[valid]
            diag[eq] -= weight
            known = flat_known[nb]
            b[eq[known]] -= weight * flat_img[:, nb[known]].T
            rows.append(eq[~known])
            cols.append(number[nb[~known]])
            vals.append(np.full(int((~known).sum()), weight))
        rows.append(np.arange(unknown.size))
        cols.append(np.arange(unknown.size))
        vals.append(diag)
        index = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]))
        size = (unknown.size, unknown.size)
        a = torch.sparse_coo_tensor(index, torch.from_numpy(np.concatenate(vals)), size, check_invariants=True)
        return a.coalesce(), torch.from_numpy(b)

    def impute(
        self, images: torch.Tensor, removed: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        return noisy_linear_impute(images, removed, self.noise, generator, self.tol, self.max_iter, self.weighting)

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(img) or img.ndim != 3:
            raise ValueError(f"img must be one image tensor (C, H, W), got {getattr(img, 'shape', type(img).__name__)}")
        mask = torch.as_tensor(mask, device=img.device)
        if mask.shape != img.shape[1:]:
            raise ValueError(
                f"mask must have the image's spatial shape {tuple(img.shape[1:])} (0 = impute), got {tuple(mask.shape)}"
            )
        return self.impute(img[None], (mask == 0)[None])[0]


class ROADMostRelevantFirst(PerturbationConfidenceMetric):
    """ROAD MoRF at one cut: the pixels at or above the ``percentile``-th percentile of the map (the
    (100 - percentile) % most relevant) are imputed; returns the target score change (B,).

    Ours, keyword-only: ``noise`` (the imputation's), ``seed``, ``batch_size``, ``precision``,
    ``memory_format`` (see ``pytorch_cam.metrics.perturbation_confidence``).
    """

    def __init__(
        self,
        percentile: Union[float, str] = 80,
        *,
        noise: float = 0.01,
        seed: Optional[int] = 0,
        batch_size: int = 128,
        precision: str = "fp32",
        memory_format: str = "auto",
    ) -> None:
        super().__init__(
            RemoveMostRelevantFirst(percentile, NoisyLinearImputer(noise)),
            batch_size=batch_size,
            precision=precision,
            memory_format=memory_format,
            seed=seed,
        )


class ROADLeastRelevantFirst(PerturbationConfidenceMetric):
    """ROAD LeRF at one cut: the (100 - percentile) % least relevant pixels are imputed (those at or
    above the ``percentile``-th percentile of 1 - map); options as ``ROADMostRelevantFirst``."""

    def __init__(
        self,
        percentile: Union[float, str] = 20,
        *,
        noise: float = 0.01,
        seed: Optional[int] = 0,
        batch_size: int = 128,
        precision: str = "fp32",
        memory_format: str = "auto",
    ) -> None:
        super().__init__(
            RemoveLeastRelevantFirst(percentile, NoisyLinearImputer(noise)),
            batch_size=batch_size,
            precision=precision,
            memory_format=memory_format,
            seed=seed,
        )


class ROADMostRelevantFirstAverage(AveragerAcrossThresholds):
    """Mean over ``percentiles`` of ``ROADMostRelevantFirst`` (lower is better), numpy (B,)."""

    def __init__(
        self,
        percentiles: Sequence[Union[float, str]] = DEFAULT_PERCENTILES_LIST,  # noqa: B006 (never mutated)
        **options,
    ) -> None:
        ROADMostRelevantFirst(**options)  # checks the options now rather than at the first call
        super().__init__(ROADMostRelevantFirst, percentiles, **options)


class ROADLeastRelevantFirstAverage(AveragerAcrossThresholds):
    """Mean over ``percentiles`` of ``ROADLeastRelevantFirst`` (higher is better), numpy (B,)."""

    def __init__(
        self,
        percentiles: Sequence[Union[float, str]] = DEFAULT_PERCENTILES_LIST,  # noqa: B006 (never mutated)
        **options,
    ) -> None:
        ROADLeastRelevantFirst(**options)  # checks the options now rather than at the first call
        super().__init__(ROADLeastRelevantFirst, percentiles, **options)


class ROADCombined:
    """(LeRF average - MoRF average) / 2 per image, numpy (B,), in [-0.5, 0.5] for probabilities
    (higher is better). ``options``: those of ``ROADMostRelevantFirst`` (noise, seed, precision, ...)."""

    def __init__(
        self,
        percentiles: Sequence[Union[float, str]] = DEFAULT_PERCENTILES_LIST,  # noqa: B006 (never mutated)
        **options,
    ) -> None:
        self.percentiles = percentiles
        self.morf_averager = ROADMostRelevantFirstAverage(percentiles, **options)
        self.lerf_averager = ROADLeastRelevantFirstAverage(percentiles, **options)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: MapsLike,
        targets: Optional[Sequence[Callable]],
        model: nn.Module,
    ) -> np.ndarray:
        lerf = self.lerf_averager(input_tensor, cams, targets, model)
        morf = self.morf_averager(input_tensor, cams, targets, model)
        return (lerf - morf) / 2
