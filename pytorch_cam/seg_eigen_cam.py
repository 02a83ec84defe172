"""Seg-Eigen-CAM.

Chung & Ying, "Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for Semantic Segmentation
Models", Applied Sciences 15(13), 7562, 2025. https://doi.org/10.3390/app15137562

Eigen-CAM on gradient-weighted activations. The absolute gradient weights every activation
element-wise, so the map keeps pixel-wise evidence of either sign (Grad-CAM's spatial average,
or a ReLU on the gradient, would lose it for a segmentation target summed over a mask):

    G   = |dy/dA| ⊙ A
    L   = ReLU(G_centred @ v_1)        (positions as samples, channels as features)

v_1 is the first right singular vector of the centred G. Its sign is arbitrary, so the
projection is negated when its most negative value is larger in magnitude than its most
positive one (the paper's sign correction, see ``first_principal_component``). The map is
always a projection, so ``eigen_smooth`` changes nothing.
"""

from __future__ import annotations

import torch

from pytorch_cam.base_cam import BaseCAM, LayerContext


class SegEigenCAM(BaseCAM, name="segeigencam"):
    always_project = True

    def layer_weighted_activations(self, ctx: LayerContext) -> torch.Tensor:
        return ctx.grads.abs() * ctx.activations
