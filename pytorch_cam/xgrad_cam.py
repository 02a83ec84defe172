"""XGrad-CAM (axiom-based Grad-CAM).

Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
BMVC 2020. https://arxiv.org/abs/2008.02312

    w_c = sum_{i,j} (A_c[i, j] / sum_{a,b} A_c[a, b]) * dy/dA_c[i, j]
    L   = ReLU(sum_c w_c A_c)
"""

from __future__ import annotations

import torch

from pytorch_cam.base_cam import BaseCAM

_EPS = 1e-7


class XGradCAM(BaseCAM, name="xgradcam"):
    def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads) -> torch.Tensor:
        dims = tuple(range(2, grads.ndim))
        act_sum = activations.sum(dim=dims, keepdim=True)
        return (grads * activations / (act_sum + _EPS)).sum(dim=dims)
