"""Grad-CAM++.

Chattopadhay et al., "Grad-CAM++: Improved Visual Explanations for Deep Convolutional
Networks", WACV 2018. https://arxiv.org/abs/1710.11063

With the score passed through an exponential, Y = exp(S), the higher derivatives of Y reduce
to powers of the first derivative g = dS/dA, which gives the closed form

    alpha_c[i, j] = g^2 / (2 g^2 + sum_{a,b} A_c[a, b] * g^3)     (0 where g == 0)
    w_c           = sum_{i,j} alpha_c[i, j] * ReLU(g[i, j])
    L             = ReLU(sum_c w_c A_c)
"""

from __future__ import annotations

import torch

from pytorch_cam.base_cam import BaseCAM

_EPS = 1e-6


class GradCAMPlusPlus(BaseCAM, name="gradcam++"):
    def get_cam_weights(self, input_tensor, target_layers, target_category, activations, grads) -> torch.Tensor:
        dims = tuple(range(2, grads.ndim))
        g2 = grads.pow(2)
        g3 = g2 * grads
        act_sum = activations.sum(dim=dims, keepdim=True)
        alpha = g2 / (2 * g2 + act_sum * g3 + _EPS)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (alpha * torch.relu(grads)).sum(dim=dims)
