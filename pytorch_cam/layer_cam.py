"""LayerCAM.

Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
IEEE Transactions on Image Processing 30, 2021. https://doi.org/10.1109/TIP.2021.3089943

Every position keeps its own weight, the positive part of the gradient there:

    L = ReLU(sum_c ReLU(dy/dA_c) ⊙ A_c)

Meant for shallow layers too, where averaged gradients (Grad-CAM) are too coarse.
"""

from __future__ import annotations

import torch

from pytorch_cam.base_cam import BaseCAM


class LayerCAM(BaseCAM, name="layercam"):
    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> torch.Tensor:
        return torch.relu(grads)
