"""Random-CAM: a baseline for evaluating CAM metrics.

Each (image, channel) gets a weight drawn uniformly from [-1, 1]:

    w_c ~ U(-1, 1),    L = ReLU(sum_c w_c A_c)

Gradient-free. With ``seed`` the weights come from a ``torch.Generator`` seeded once at
construction: a fixed seed gives the same sequence of maps over successive calls.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM


class RandomCAM(BaseCAM, name="randomcam"):
    uses_gradients = False
    needs_targets = False

    def __init__(self, model: nn.Module, target_layers, reshape_transform=None, seed: Optional[int] = None, **kwargs):
        super().__init__(model, target_layers, reshape_transform=reshape_transform, **kwargs)
        self.seed = seed
        self._generator: Optional[torch.Generator] = None
        if seed is not None:
            self._generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads) -> torch.Tensor:
        shape = activations.shape[:2]
        u = torch.rand(shape, generator=self._generator, device=activations.device, dtype=torch.float32)
        return 2 * u - 1
