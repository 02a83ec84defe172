"""Grad-CAM.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017. https://arxiv.org/abs/1610.02391

    w_c = mean_{i,j} dy/dA_c[i, j]          (global-average-pooled gradient)
    L   = ReLU(sum_c w_c A_c)
"""

from __future__ import annotations

import torch

from pytorch_cam.base_cam import BaseCAM


class GradCAM(BaseCAM, name="gradcam"):
    def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads) -> torch.Tensor:
        return grads.mean(dim=tuple(range(2, grads.ndim)))
