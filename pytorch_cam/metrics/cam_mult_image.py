"""Confidence change when the image is multiplied by its map, with pytorch-grad-cam's class interface.

Chattopadhyay et al., "Grad-CAM++", WACV 2018 (https://arxiv.org/abs/1710.11063). With Y_i the
target score on image i and O_i the score on the explanation map E_i = X_i * L_i:

    CamMultImageConfidenceChange:  O_i - Y_i             (return_diff=False: O_i)
    DropInConfidence:              max(0, Y_i - O_i)     (lower is better)
    IncreaseInConfidence:          1[O_i > Y_i]          (higher is better)

each a numpy float32 array (B,). These are front-ends over
``pytorch_cam.metrics.confidence.masked_scores`` (one batched forward of the images and their
explanation maps); ``average_drop`` there divides the drop by Y_i, as the paper's Average Drop does,
while ``DropInConfidence`` keeps pytorch-grad-cam's absolute drop. Keyword-only options:
``precision``, ``memory_format``, ``batch_size`` (see ``pytorch_cam.metrics.perturbation_confidence``).
"""

from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np
import torch

from pytorch_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric

__all__ = ["CamMultImageConfidenceChange", "DropInConfidence", "IncreaseInConfidence", "multiply_tensor_with_cam"]


def multiply_tensor_with_cam(input_tensor: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """The explanation map: the (normalised) input times the map, broadcast over channels
    ((C, H, W) * (H, W), or a batch (B, C, H, W) * (B, 1, H, W))."""
    return input_tensor * cam


class CamMultImageConfidenceChange(PerturbationConfidenceMetric):
    """Target score on image * map minus the score on the image, numpy float32 (B,)."""

    def __init__(self, *, batch_size: int = 128, precision: str = "fp32", memory_format: str = "auto") -> None:
        super().__init__(
            multiply_tensor_with_cam, batch_size=batch_size, precision=precision, memory_format=memory_format
        )


def _map_scores(result: Union[np.ndarray, Tuple[np.ndarray, Any]], fn) -> Any:
    """Apply ``fn`` to the scores of a metric result, keeping the visualisation if there is one."""
    if isinstance(result, tuple):
        return (fn(result[0]), *result[1:])
    return fn(result)


class DropInConfidence(CamMultImageConfidenceChange):
    """max(0, Y - O): how much the target score drops on image * map (lower is better), numpy (B,)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _map_scores(super().__call__(*args, **kwargs), lambda s: np.maximum(-s, 0).astype(np.float32))


class IncreaseInConfidence(CamMultImageConfidenceChange):
    """1 where the target score rises on image * map, else 0 (higher is better), numpy float32 (B,)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _map_scores(super().__call__(*args, **kwargs), lambda s: np.float32(s > 0))
