"""Smooth Grad-CAM++.

Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level Visualization Technique for Deep
Convolutional Neural Network Models", 2019. https://arxiv.org/abs/1908.01224

Grad-CAM++ with the gradient powers averaged over ``n`` noisy copies of the input
(X + N(0, std^2), as in SmoothGrad). With g_m = dy/dA at copy m and D_p = (1/n) sum_m g_m^p:

    alpha_c[i, j] = D_2 / (2 D_2 + sum_{a,b} A_c[a, b] * D_3)     (0 where D_2 == 0)
    w_c           = sum_{i,j} alpha_c[i, j] * ReLU(D_1[i, j])
    L             = ReLU(sum_c w_c A_c)                          (A: the clean input's activations)

The noise comes from a ``torch.Generator`` seeded with ``seed`` at every call, so a call is a
deterministic function of its input when ``seed`` is set. ``std = 0`` gives Grad-CAM++.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM, CallState, LayerContext

_EPS = 1e-6


class SmoothGradCAMpp(BaseCAM, name="smoothgradcampp"):
    def __init__(
        self,
        model: nn.Module,
        target_layers,
        reshape_transform=None,
        num_samples: int = 4,
        std: float = 0.3,
        seed: Optional[int] = None,
        **kwargs,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform=reshape_transform, **kwargs)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std!r}")
        self.num_samples = num_samples
        self.std = float(std)
        self.seed = seed

    def _gradient_moments(self, call: CallState) -> list:
        """Per target layer: (D_1, D_2, D_3) over the noisy copies, computed once per call."""
        if "smooth_moments" in call.cache:
            return call.cache["smooth_moments"]
        x = call.input_tensor
        generator = torch.Generator(device=x.device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(self.seed))
        sums: list = [None] * len(self.layers)
        for _ in range(self.num_samples):
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * self.std
            noisy = self.capture_pass(x + noise, call.targets, need_grads=True)
            for i in range(len(self.layers)):
                g = self.layer_context(noisy, i).grads.float()
                powers = (g, g * g, g * g * g)
                sums[i] = powers if sums[i] is None else tuple(s + p for s, p in zip(sums[i], powers))
        moments = [tuple(s / self.num_samples for s in layer) for layer in sums]
        call.cache["smooth_moments"] = moments
        return moments

    def layer_weights(self, ctx: LayerContext) -> torch.Tensor:
        d1, d2, d3 = self._gradient_moments(ctx.call)[ctx.index]
        activations = ctx.activations
        dims = tuple(range(2, activations.ndim))
        act_sum = activations.float().sum(dim=dims, keepdim=True)
        alpha = d2 / (2 * d2 + act_sum * d3 + _EPS)
        alpha = torch.where(d2 > 0, alpha, torch.zeros_like(alpha))
        return (alpha * torch.relu(d1)).sum(dim=dims)
