"""Perturbation-confidence metrics with pytorch-grad-cam's class interface, on pytorch_cam's batched metrics.

A metric object perturbs every image with its map and reports how the target score changes:

    metric = PerturbationConfidenceMetric(perturbation)
    scores = metric(input_tensor, cams, targets, model)          # numpy float32 (B,)
    # = target_i(model(perturbed_i)) - target_i(model(input_i))  (return_diff=False: the first term)

``input_tensor`` (B, C, H, W) is on the model's device, ``cams`` (B, H, W) in [0, 1] (numpy or
torch, e.g. a CAM's output), ``targets`` one callable per image (``ClassifierOutputTarget(c)``
scores the logit, ``ClassifierOutputSoftmaxTarget(c)`` the probability; None: the logit of each
image's top class). ``return_visualization=True`` also returns the perturbed images (B, C, H, W).

``perturbation(image (C, H, W), cam (H, W)) -> image`` is any callable, as in pytorch-grad-cam. The
ones of pytorch_cam (``multiply_tensor_with_cam``, ``RemoveMostRelevantFirst`` /
``RemoveLeastRelevantFirst`` with a ``NoisyLinearImputer``) are recognised and run batched on the
model's device through ``pytorch_cam.metrics.confidence.masked_scores`` and
``pytorch_cam.metrics.road.road_curve``; any other is called once per image, and the perturbed
images are then scored in batches. ``AveragerAcrossThresholds`` averages a metric over several
percentiles; for the ROAD metrics every (image, percentile) pair shares one batched run.

Keyword-only options after pytorch-grad-cam's parameters: ``batch_size`` (perturbed images per
forward), ``precision`` (``"fp32"`` | ``"bf16"`` | ``"fp16"``, autocast for the forwards; results stay
float32), ``memory_format`` (see ``pytorch_cam.metrics._common.Forward``) and ``seed`` (the ROAD
imputation noise; None: torch's global generator, as pytorch-grad-cam).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from pytorch_cam.metrics._common import (
    Forward,
    MapsLike,
    check_batch_size,
    check_images,
    check_maps,
    check_percentile,
    percentile_list,
    resolve_targets,
    score_rows,
)

__all__ = [
    "AveragerAcrossThresholds",
    "PerturbationConfidenceMetric",
    "RemoveLeastRelevantFirst",
    "RemoveMostRelevantFirst",
]

#: ROAD's percentiles, pytorch-grad-cam's default (a list for an identical signature; never mutated)
DEFAULT_PERCENTILES_LIST = [10, 20, 30, 40, 50, 60, 70, 80, 90]


def _removed_percent(percentile: Union[float, str]) -> Union[float, str]:
    """pytorch-grad-cam's cut percentile p (pixels at or above the p-th percentile go) as the
    percentage of pixels that ``road_curve`` removes, 100 - p."""
    percentile = check_percentile(percentile)
    return percentile if percentile == "auto" else 100 - percentile


class RemoveMostRelevantFirst:
    """Perturbation that removes the most relevant pixels and imputes them with ``imputer``.

    Every pixel whose map value is at or above the ``percentile``-th percentile of the map
    (``numpy.percentile``) is removed, i.e. the (100 - percentile) % most relevant ones; ``"auto"``
    removes the pixels above Otsu's threshold of the 8-bit map. (pytorch-grad-cam 1.5.7 keeps
    those and removes the rest for ``"auto"``, the opposite of "most relevant first"; we remove
    what the name says.)

    ``imputer(image (C, H, W), mask (H, W)) -> image`` fills the pixels where ``mask == 0``; a
    ``pytorch_cam.metrics.road.NoisyLinearImputer`` is run batched.
    """

    order = "morf"

    def __init__(self, percentile: Union[float, str], imputer: Callable) -> None:
        check_percentile(percentile)
        self.percentile = percentile
        self.imputer = imputer

    def batched_imputer(self) -> Callable:
        """``imputer(images (R, C, H, W), removed (R, H, W) bool, generator)`` for ``road_curve``."""
        batched = getattr(self.imputer, "impute", None)
        if batched is not None and getattr(self.imputer, "batched", False):
            return batched
        user = self.imputer

        def per_image(images: torch.Tensor, removed: torch.Tensor, generator) -> torch.Tensor:
            # the pytorch-grad-cam protocol: one CPU image and a float mask that is 0 where to impute
            out = [user(img.cpu(), (~holes).float().cpu()) for img, holes in zip(images, removed)]
            return torch.stack([o.to(images.device, images.dtype) for o in out])

        return per_image

    def __call__(self, input_tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One image (C, H, W) with its map ``mask`` (H, W) -> the image with the pixels removed and imputed."""
        from pytorch_cam.metrics.road import removal  # road imports this module for its classes

        if not torch.is_tensor(input_tensor) or input_tensor.ndim != 3:
            shape = getattr(input_tensor, "shape", type(input_tensor).__name__)
            raise ValueError(f"input_tensor must be one image (C, H, W), got {shape}")
        maps = torch.as_tensor(mask, dtype=torch.float32, device=input_tensor.device)
        if maps.shape != input_tensor.shape[1:]:
            want = tuple(input_tensor.shape[1:])
            raise ValueError(f"mask must have the image's shape {want}, got {tuple(maps.shape)}")
        removed = removal(maps[None], self.order, [_removed_percent(self.percentile)], ties="all")
        zero = torch.zeros(1, dtype=torch.long, device=maps.device)
        return self.batched_imputer()(input_tensor[None], removed(zero, zero), None)[0]


class RemoveLeastRelevantFirst(RemoveMostRelevantFirst):
    """Perturbation that removes the least relevant pixels: those whose inverted map 1 - map is at or
    above its ``percentile``-th percentile, i.e. the (100 - percentile) % least relevant ones."""

    order = "lerf"


class PerturbationConfidenceMetric:
    """Score change when each image is perturbed with its map; see the module docstring.

    ``__call__(input_tensor, cams, targets, model, return_visualization=False, return_diff=True)``
    returns numpy float32 (B,) (and the perturbed images (B, C, H, W) with ``return_visualization``).
    """

    def __init__(
        self,
        perturbation: Callable,
        *,
        batch_size: int = 128,
        precision: str = "fp32",
        memory_format: str = "auto",
        seed: Optional[int] = 0,
    ) -> None:
        check_batch_size(batch_size)
        self.perturbation = perturbation
        self.batch_size = batch_size
        self.precision = precision
        self.memory_format = memory_format
        self.seed = seed
        Forward(nn.Identity(), precision, memory_format)  # checks both now, not at the first call

    def scores(
        self,
        input_tensor: torch.Tensor,
        cams: MapsLike,
        targets: Optional[Sequence[Callable]],
        model: nn.Module,
        percentiles: Optional[Sequence] = None,
        return_visualization: bool = False,
        return_diff: bool = True,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(scores (B, P) float32 on the device, perturbed images (B, P, C, H, W) or None).

        ``percentiles`` (ROAD perturbations only) replaces the perturbation's own percentile by
        several, scored in one batched run; otherwise P = 1.
        """
        from pytorch_cam.metrics.cam_mult_image import multiply_tensor_with_cam  # imports this module
        from pytorch_cam.metrics.confidence import masked_scores
        from pytorch_cam.metrics.road import road_curve

        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, got {type(model).__name__}; the call is "
                "metric(input_tensor, cams, targets, model)"
            )
        forward = Forward(model, self.precision, self.memory_format)
        x = check_images(model, input_tensor)
        maps = check_maps(cams, x)
        target_list = resolve_targets(model, x, targets, forward)
        options = {"precision": self.precision, "memory_format": self.memory_format}
        b = x.shape[0]
        perturbation = self.perturbation
        clean = None
        images = None
        if percentiles is not None and not isinstance(perturbation, RemoveMostRelevantFirst):
            raise TypeError("percentiles= applies to the ROAD perturbations (Remove{Most,Least}RelevantFirst)")
        if perturbation is multiply_tensor_with_cam:
            clean, after = masked_scores(model, x, maps, target_list, score="target", **options)
            after = after[:, None]
            if return_visualization:
                images = multiply_tensor_with_cam(x, maps[:, None].to(x.dtype))[:, None]
        elif isinstance(perturbation, RemoveMostRelevantFirst):
            wanted = [perturbation.percentile] if percentiles is None else percentile_list(percentiles)
            out = road_curve(
                model,
                x,
                maps,
                target_list,
                order=perturbation.order,
                percentiles=[_removed_percent(p) for p in wanted],
                seed=self.seed,
                batch_size=self.batch_size,
                score="target",
                ties="all",
                imputer=perturbation.batched_imputer(),
                return_images=return_visualization,
                **options,
            )
            after, images = out if return_visualization else (out, None)
        else:
            # a user's perturbation: called per image on the CPU as in pytorch-grad-cam, scored batched
            cpu_maps = maps.cpu()
            perturbed = torch.stack(
                [torch.as_tensor(perturbation(x[i].cpu(), cpu_maps[i])).to(x.device, x.dtype) for i in range(b)]
            )
            if perturbed.shape != x.shape:
                raise ValueError(
                    f"the perturbation returned images of shape {tuple(perturbed.shape[1:])} for inputs of shape "
                    f"{tuple(x.shape[1:])}; it must return the perturbed image, shaped like its input"
                )
            after = self._score(model, perturbed, target_list, forward)[:, None]
            images = perturbed[:, None] if return_visualization else None
        if return_diff:
            if clean is None:
                clean = self._score(model, x, target_list, forward)
            after = after - clean[:, None]
        return after, images

    def _score(self, model: nn.Module, x: torch.Tensor, targets: List[Callable], forward: Forward) -> torch.Tensor:
        def make_rows(lo: int, hi: int):
            return x[lo:hi], torch.arange(lo, hi, device=x.device)

        return score_rows(model, make_rows, x.shape[0], None, "target", self.batch_size, forward, targets, x.device)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: MapsLike,
        targets: Optional[Sequence[Callable]],
        model: nn.Module,
        return_visualization: bool = False,
        return_diff: bool = True,
    ) -> Union[np.ndarray, Tuple[np.ndarray, torch.Tensor]]:
        scores, images = self.scores(
            input_tensor, cams, targets, model, return_visualization=return_visualization, return_diff=return_diff
        )
        result = scores[:, 0].cpu().numpy().astype(np.float32)
        if return_visualization:
            return result, images[:, 0]
        return result


class AveragerAcrossThresholds:
    """Mean of a percentile-parameterised metric over ``percentiles``: ``imputer(percentile)`` builds
    the metric for one percentile (e.g. ``ROADMostRelevantFirst``); returns numpy float32 (B,).

    ``options`` (ours) go to ``imputer(percentile, **options)``, e.g. ``precision="bf16"``. For
    pytorch_cam's ROAD metrics all percentiles are scored in one batched run; any other metric is
    called once per percentile.
    """

    def __init__(
        self,
        imputer: Callable[..., Any],
        percentiles: Sequence[Union[float, str]] = DEFAULT_PERCENTILES_LIST,  # noqa: B006 (never mutated)
        **options: Any,
    ) -> None:
        self.imputer = imputer
        self.percentiles = percentiles
        self.options = options

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: MapsLike,
        targets: Optional[Sequence[Callable]],
        model: nn.Module,
    ) -> np.ndarray:
        percentiles = percentile_list(self.percentiles)
        metric = self.imputer(percentiles[0], **self.options)
        batched = (
            isinstance(metric, PerturbationConfidenceMetric)
            and type(metric).__call__ is PerturbationConfidenceMetric.__call__
            and isinstance(metric.perturbation, RemoveMostRelevantFirst)
        )
        if batched:
            scores, _ = metric.scores(input_tensor, cams, targets, model, percentiles=percentiles)
            return scores.mean(dim=1).cpu().numpy().astype(np.float32)
        per_percentile = [metric(input_tensor, cams, targets, model)]
        per_percentile += [self.imputer(p, **self.options)(input_tensor, cams, targets, model) for p in percentiles[1:]]
        return np.mean(np.float32(per_percentile), axis=0)
