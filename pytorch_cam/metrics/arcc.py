"""ARCC: the harmonic mean of Coherency, 1 - Complexity and ROAD, with pytorch-grad-cam's interface.

Complexity and Coherency are from Poppi, Cornia, Baraldi and Cucchiara, "Revisiting the Evaluation
of Class Activation Mapping for Explainability: A Novel Metric and Experimental Analysis", CVPR
Workshops 2021 (https://arxiv.org/abs/2104.10252), whose ADCC combines them with Average Drop;
ARCC (pytorch-grad-cam 1.5.7) uses ROAD (``pytorch_cam.metrics.road``) instead:

    Complexity_i = ||L_i||_1 / (H W)                                   (lower is better)
    Coherency_i  = (pearson(L_i, CAM(X_i * L_i)) + 1) / 2               (higher is better)
    ROAD_i       = clip(2 * ROADCombined_i, 0, 1)                       (higher is better)
    ARCC_i       = 3 / (1 / Coherency_i + 1 / (1 - Complexity_i) + 1 / ROAD_i)

(each denominator + 1e-8). ``CAM`` is the method that made the maps, re-run on the input
multiplied by its map: a coherent explanation explains its own explanation the same way.
All results are numpy float32 (B,), computed in torch on the model's device.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM
from pytorch_cam.metrics._common import as_maps, check_images
from pytorch_cam.metrics.road import ROADCombined

__all__ = ["ARCC", "Coherency", "Complexity", "batch_pearson_coherency"]

_EPS = 1e-8


def _as_tensor(x: Union[np.ndarray, torch.Tensor], name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if torch.is_tensor(x):
        return x.detach()
    raise TypeError(f"{name} must be a numpy array or a tensor of shape (B, H, W), got {type(x).__name__}")


def batch_pearson_coherency(
    A: Union[np.ndarray, torch.Tensor], B: Union[np.ndarray, torch.Tensor]
) -> Union[np.ndarray, torch.Tensor]:
    """Pearson correlation of each pair of maps A[i], B[i] (any equal shapes with a batch axis first),
    cov / (std_A std_B + 1e-8); numpy float32 (B,) for numpy inputs, else a float32 tensor."""
    a, b = _as_tensor(A, "A"), _as_tensor(B, "B")
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(
            f"A and B must be batches of maps of one shape (B, ...), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a = a.reshape(a.shape[0], -1).double()
    b = b.to(a.device).reshape(b.shape[0], -1).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    n = max(a.shape[1] - 1, 1)  # the sample (n - 1) normalisation cancels; kept for the eps's scale
    cov = (a * b).sum(dim=1) / n
    std = torch.sqrt((a * a).sum(dim=1) / n) * torch.sqrt((b * b).sum(dim=1) / n)
    rho = (cov / (std + _EPS)).float()
    return rho.cpu().numpy() if isinstance(A, np.ndarray) else rho


class Complexity:
    """Mean absolute map value per image, in [0, 1] for maps in [0, 1] (0: empty map); numpy float32 (B,)."""

    def __call__(self, grayscale_cams: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        cams = _as_tensor(grayscale_cams, "grayscale_cams")
        if cams.ndim < 2:
            raise ValueError(f"grayscale_cams must be a batch of maps (B, H, W), got shape {tuple(cams.shape)}")
        return cams.reshape(cams.shape[0], -1).float().abs().mean(dim=1).cpu().numpy()


class Coherency:
    """(pearson(map, base_method's map of image * map) + 1) / 2 per image, numpy float32 (B,)."""

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: Union[np.ndarray, torch.Tensor],
        targets: Optional[List[Callable]],
        model: nn.Module,
        base_method: BaseCAM,
    ) -> np.ndarray:
        if not callable(base_method):
            raise TypeError(
                f"base_method must be a CAM object (e.g. GradCAM(model, target_layers)), got {base_method!r}"
            )
        x = check_images(model, input_tensor)
        cams = as_maps(grayscale_cams)
        if cams.shape != (x.shape[0], *x.shape[2:]):
            raise ValueError(
                f"grayscale_cams must have shape (B, H, W) = {(x.shape[0], *x.shape[2:])} like the input, "
                f"got {tuple(cams.shape)}"
            )
        mixed = x * cams.to(x.device, x.dtype)[:, None]
        again = base_method(input_tensor=mixed, targets=targets)
        return (batch_pearson_coherency(np.asarray(again), cams.cpu().numpy()) + 1) / 2


class ARCC:
    """ARCC per image (higher is better), numpy float32 (B,): see the module docstring.

    ``base_method``: the CAM object that made the maps. ``road_percentiles``: ROAD's cuts.
    ``road_options`` (ours): keyword arguments of ``ROADCombined`` (``noise``, ``seed``,
    ``batch_size``, ``precision``, ``memory_format``); the CAM keeps its own precision.
    """

    def __init__(
        self,
        base_method: BaseCAM,
        road_percentiles: Sequence[Union[float, str]] = [20, 40, 60, 80],  # noqa: B006 (never mutated)
        **road_options: Any,
    ) -> None:
        self.complexity = Complexity()
        self.coherency = Coherency()
        self.road = ROADCombined(percentiles=road_percentiles, **road_options)
        self.base_method = base_method

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: Union[np.ndarray, torch.Tensor],
        targets: Optional[List[Callable]],
        model: nn.Module,
    ) -> np.ndarray:
        complexity = self.complexity(grayscale_cams)
        coherency = self.coherency(input_tensor, grayscale_cams, targets, model, self.base_method)
        road = self.road(input_tensor, grayscale_cams, targets, model)
        road = np.clip(2 * road, 0, 1)  # ROADCombined lies in [-0.5, 0.5] for probabilities
        inverse = 1 / (coherency + _EPS) + 1 / ((1 - complexity) + _EPS) + 1 / (road + _EPS)
        return (3 / inverse).astype(np.float32)
