"""RefineCAM: the product of a base method's maps over several layers.

pytorch-grad-cam 1.5.7, after https://arxiv.org/abs/2605.14641 ("meta-method for aggregating CAMs
from multiple layers"; it denoises the maps of early, high-resolution layers). With M_l the base
method's map of target layer l (ReLU, min-max scaled to [0, 1] and resized to the input: what
the base method returns for that layer alone),

    L = minmax(prod_l M_l)

instead of the base pipeline's mean over layers. A position survives only where every layer
agrees: a deep layer's coarse map gates the fine but noisy detail of an early one.

pytorch-grad-cam builds one CAM object per layer and runs a forward and backward pass for each.
Only the combination of the per-layer maps differs from the base method, so here one CAM of the
base method explains all the layers from a single pass and multiplies their maps
(``refine_variant`` overrides ``combine_layers``).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM, CallState, TargetLike, min_max_scale
from pytorch_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_cam.meta_cam import MetaCAM, check_base_method


def check_per_layer_method(base_method: Any) -> type:
    """``base_method`` if it explains its target layers one by one, else a clear error."""
    check_base_method(base_method)
    for hook in ("combine_layers", "forward_tensor"):
        if getattr(base_method, hook) is not getattr(BaseCAM, hook):
            raise ValueError(
                f"{base_method.__name__} does not explain its target layers one by one (it overrides "
                f"{hook}), so there are no per-layer maps to multiply; use a per-layer method such as "
                "GradCAMPlusPlus, GradCAM, LayerCAM or ScoreCAM as base_method"
            )
    return base_method


@cache
def refine_variant(base_method: type) -> type:
    """``base_method`` with its per-layer maps multiplied instead of averaged."""

    class Variant(base_method):
        def combine_layers(self, call: CallState, eigen_smooth: bool) -> torch.Tensor:
            maps = []
            for i in range(len(self.layers)):
                layer_map = self._layer_map(self.layer_context(call, i), eigen_smooth)
                # Scaled again after resizing, so each factor is exactly the base method's
                # single-layer map (upsampling can lower a map's maximum below 1).
                maps.append(min_max_scale(layer_map))
            return torch.stack(maps, dim=1).prod(dim=1)

    Variant.__name__ = Variant.__qualname__ = f"Refine{base_method.__name__}"
    Variant.display_name = f"RefineCAM({base_method.__name__})"
    Variant.__module__ = __name__
    return Variant


class RefineCAM(MetaCAM, name="refinecam"):
    """RefineCAM on top of any per-layer CAM method.

    Args:
        model, target_layers, reshape_transform: as for every method (see ``BaseCAM``); each
            target layer is one factor of the product (a single layer gives the base method's map).
        base_method: the per-layer CAM class (a ``BaseCAM`` subclass of this package). Methods
            that combine their layers themselves (FullGrad) are rejected.
        **kwargs: passed on to ``base_method``, e.g. ``k=3`` for FEM or ``batch_size`` for ScoreCAM.

    Call it as ``cam(input_tensor, targets=None, eigen_smooth=False, aug_smooth=False)``: the
    third positional argument is ``eigen_smooth``, as in pytorch-grad-cam's RefineCAM.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[Sequence[nn.Module], nn.Module, None],
        reshape_transform: Optional[Callable[..., torch.Tensor]] = None,
        base_method: type = GradCAMPlusPlus,
        **kwargs: Any,
    ) -> None:
        self.base_method = check_per_layer_method(base_method)
        self.base_cam = refine_variant(base_method)(model, target_layers, reshape_transform=reshape_transform, **kwargs)

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[Sequence[TargetLike]] = None,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
    ) -> np.ndarray:
        """One map per image: numpy float32 (B, *input spatial) in [0, 1].

        ``eigen_smooth`` projects each layer's weighted activations on their first principal
        component before the product; ``aug_smooth`` averages the refined maps of augmented
        copies (flips and brightness), de-augmented.
        """
        return self.base_cam.forward(input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
