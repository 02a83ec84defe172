"""FEM: Feature Explanation Method.

Fuad, Martin, Giot, Bourqui, Benois-Pineau & Zemmari, "Features understanding in 3D CNNs for
actions recognition in video", IPTA 2020. https://hal.science/hal-02963298/document

Gradient-free and class-agnostic. A channel matters as much as it has strong, rare responses:
with mu_c and sigma_c the mean and (population) standard deviation of channel c over all its
positions (H x W, or D x H x W for video volumes), the k-sigma rule marks the outliers and the
channel's weight is the fraction of positions above the threshold,

    th_c = mu_c + k sigma_c
    w_c  = |{p : A_c[p] > th_c}| / |positions|
    L    = ReLU(sum_c w_c A_c)

``targets`` change nothing (as in pytorch-grad-cam): the weights do not depend on the output.
No value of n positions lies more than sqrt(n - 1) standard deviations above their mean, so a
layer needs more than 1 + k^2 positions (k = 2: at least 6, e.g. 3x3) for any weight to be
non-zero; below that the map is all zeros. ``eigen_smooth`` projects w_c A_c on its first
principal component, as for the other weight-based methods.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM


class FEM(BaseCAM, name="fem"):
    """Feature Explanation Method (k-sigma rule weights).

    Args (besides ``BaseCAM``'s):
        k: how many standard deviations above a channel's mean a response must be to count
            (the paper's k = 2).
    """

    uses_gradients = False
    needs_targets = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[Sequence[nn.Module], nn.Module, None] = None,
        reshape_transform: Optional[Callable[..., torch.Tensor]] = None,
        k: float = 2,
        **kwargs,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or not math.isfinite(k):
            raise ValueError(f"k must be a finite number of standard deviations (e.g. k=2), got {k!r}")
        super().__init__(model, target_layers, reshape_transform=reshape_transform, **kwargs)
        self.k = k

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> torch.Tensor:
        flat = activations.reshape(*activations.shape[:2], -1).float()
        # correction=0: the population standard deviation, as in the paper (and numpy's default).
        std, mean = torch.std_mean(flat, dim=2, correction=0, keepdim=True)
        threshold = mean + self.k * std
        return (flat > threshold).float().mean(dim=2)
