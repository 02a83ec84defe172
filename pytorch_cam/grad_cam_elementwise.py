"""Grad-CAM element-wise.

A Grad-CAM variant from pytorch-grad-cam (after HiResCAM, https://arxiv.org/abs/2011.08891):
the product of gradient and activation is rectified per element before the channel sum, so
negative contributions cannot cancel positive ones at the same position:

    L = sum_c ReLU(dy/dA_c ⊙ A_c)
"""

from __future__ import annotations

import torch

from pytorch_cam.base_cam import BaseCAM, LayerContext


class GradCAMElementWise(BaseCAM, name="gradcamelementwise"):
    def layer_weighted_activations(self, ctx: LayerContext) -> torch.Tensor:
        return torch.relu(ctx.grads.to(ctx.activations.dtype) * ctx.activations)
