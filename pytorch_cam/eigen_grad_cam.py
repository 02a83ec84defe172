"""Eigen-Grad-CAM.

The class-discriminative variant of Eigen-CAM (Muhammad & Yeasin, IJCNN 2020,
https://arxiv.org/abs/2008.00299) introduced by pytorch-grad-cam: the first principal component
of the gradient-weighted activations instead of the raw activations,

    L = ReLU(PC_1(dy/dA ⊙ A))

(positions as samples, channels as features, centred; the component's sign is fixed as in
``first_principal_component``).
"""

from __future__ import annotations

import torch

from pytorch_cam.base_cam import BaseCAM


class EigenGradCAM(BaseCAM, name="eigengradcam"):
    always_project = True

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> torch.Tensor:
        return grads
