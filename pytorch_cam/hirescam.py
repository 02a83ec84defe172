"""HiResCAM.

Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional
neural networks", 2020. https://arxiv.org/abs/2011.08891

The gradient is not averaged over positions; it multiplies the activations element-wise:

    L = ReLU(sum_c dy/dA_c ⊙ A_c)

For a network ending in global average pooling and a linear layer this is exactly the class
score's contribution of each position (up to the constant 1/(H W)).
"""

from __future__ import annotations

import torch

from pytorch_cam.base_cam import BaseCAM


class HiResCAM(BaseCAM, name="hirescam"):
    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> torch.Tensor:
        return grads
