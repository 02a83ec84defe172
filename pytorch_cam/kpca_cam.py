"""KPCA-CAM.

Karmani et al., "KPCA-CAM: Visual Explainability of Deep Computer Vision Models using Kernel
PCA", 2024. https://arxiv.org/abs/2410.00267

Eigen-CAM with kernel PCA: gradient-free and class-agnostic (targets change nothing). Per image,
the layer's positions are the samples x_i (channel vectors, centred); with a kernel k, the
double-centred kernel matrix K_c = (I - 1/N) K (I - 1/N), K_ij = k(x_i, x_j), has a largest
eigenpair (lambda, v) and the map is the samples' first kernel principal component,

    L = ReLU(sqrt(lambda) v)

Kernels as in scikit-learn's KernelPCA (gamma = 1 / channels by default, degree 3, coef0 1):
linear x.y, poly (gamma x.y + 1)^3, rbf exp(-gamma |x - y|^2), sigmoid tanh(gamma x.y + 1)
(the default), cosine x.y / (|x| |y|). The sign of v is fixed so that its entry of largest
magnitude is positive: scikit-learn's rule, so the maps equal pytorch-grad-cam's (which runs
KernelPCA image by image). ``eigen_smooth`` changes nothing: the map is already a projection.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM, LayerContext
from pytorch_cam.utils.svd_on_activations import check_kernel, kernel_pca_projection


class KPCA_CAM(BaseCAM, name="kpcacam"):  # noqa: N801 (pytorch-grad-cam's class name)
    """Kernel-PCA projection of the activations (see the module docstring).

    Args (besides ``BaseCAM``'s):
        kernel: 'linear', 'poly', 'rbf', 'sigmoid' or 'cosine' (scikit-learn's definitions).
        gamma: the kernel coefficient of 'poly', 'rbf' and 'sigmoid'; ``None`` is 1 / channels.
    """

    uses_gradients = False
    needs_targets = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[Sequence[nn.Module], nn.Module, None] = None,
        reshape_transform: Optional[Callable[..., torch.Tensor]] = None,
        kernel: str = "sigmoid",
        gamma: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        check_kernel(kernel, gamma)
        super().__init__(model, target_layers, reshape_transform=reshape_transform, **kwargs)
        self.kernel = kernel
        self.gamma = gamma

    def layer_cam(self, ctx: LayerContext, eigen_smooth: bool) -> torch.Tensor:
        return kernel_pca_projection(ctx.activations, self.kernel, self.gamma)
