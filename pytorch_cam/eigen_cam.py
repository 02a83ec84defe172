"""Eigen-CAM.

Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", IJCNN 2020.
https://arxiv.org/abs/2008.00299

No weights and no gradients: the map is the projection of the layer's activations (positions
as samples, channels as features, centred) on their first principal component,

    L = ReLU(A_centred @ v_1)

The sign of v_1 is arbitrary; we fix it so that the projection's largest magnitude is positive
(see ``first_principal_component``). It is therefore class-agnostic: targets do not change it.
"""

from __future__ import annotations

import torch

from pytorch_cam.base_cam import BaseCAM, LayerContext


class EigenCAM(BaseCAM, name="eigencam"):
    uses_gradients = False
    needs_targets = False
    always_project = True

    def layer_weighted_activations(self, ctx: LayerContext) -> torch.Tensor:
        return ctx.activations
