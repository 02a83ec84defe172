"""Projections of activations on their first principal component, linear or kernel, in torch.

Drop-in replacements for pytorch-grad-cam's ``pytorch_grad_cam.utils.svd_on_activations``: the
same names and arguments, but batched over images in torch (on the input's device) instead of a
numpy/scikit-learn loop. Each function takes activations (B, C, *spatial) — a numpy array, as
pytorch-grad-cam users pass, or a torch tensor — and returns one projection per image (B, *spatial)
of the same kind: numpy float32 for numpy input, a tensor of the input's floating dtype for a
tensor. As in pytorch-grad-cam, NaN activations count as 0.

Per image, positions are the samples and channels the features; the samples are centred first.

Signs. A principal direction is only defined up to sign. Every function here fixes it the same
way: the projection's entry of largest magnitude is made positive. For the kernel projection this
is scikit-learn's own rule (``KernelPCA`` applies ``svd_flip`` to its eigenvectors), so
``get_2d_projection_kernel`` matches pytorch-grad-cam's output sign included. pytorch-grad-cam's
plain ``get_2d_projection`` keeps whatever sign LAPACK returns (arbitrary); ours returns the
sign-corrected projection, i.e. it equals ``get_2d_projection_with_sign_correction`` (Chung & Ying,
"Seg-Eigen-CAM", Applied Sciences 2025, Eq. 13), one of the two projections the peer may return.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, TypeVar

import numpy as np
import torch

from pytorch_cam.base_cam import first_principal_component

__all__ = [
    "KERNELS",
    "check_kernel",
    "pairwise_kernel",
    "kernel_pca_projection",
    "get_2d_projection",
    "get_2d_projection_kernel",
    "get_2d_projection_with_sign_correction",
]

#: the kernels of scikit-learn's KernelPCA that are supported (``precomputed`` and callables are not)
KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)


def check_kernel(kernel: str, gamma: Optional[float]) -> None:
    """Raise a ``ValueError`` naming the fix when ``kernel`` or ``gamma`` is not usable."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(
            f"kernel must be one of {', '.join(repr(k) for k in KERNELS)} (scikit-learn's KernelPCA "
            f"kernels; 'precomputed' and callables are not supported), got {kernel!r}"
        )
    if gamma is not None and (
        isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not math.isfinite(gamma) or gamma <= 0
    ):
        raise ValueError(
            f"gamma must be a positive number, or None for scikit-learn's default 1 / n_channels, got {gamma!r}"
        )


def pairwise_kernel(
    x: torch.Tensor, kernel: str = "sigmoid", gamma: Optional[float] = None, degree: int = 3, coef0: float = 1.0
) -> torch.Tensor:
    """Kernel matrices (B, N, N) between the N samples (B, N, F) of each batch item.

    The definitions are scikit-learn's (``sklearn.metrics.pairwise``), with ``gamma`` defaulting
    to 1 / F; ``gamma``, ``degree`` and ``coef0`` are ignored where the kernel has no such term.
    """
    check_kernel(kernel, gamma)
    g = 1.0 / x.shape[-1] if gamma is None else float(gamma)
    if kernel == "cosine":
        # A zero row stays zero, as in sklearn.preprocessing.normalize.
        norm = x.norm(dim=-1, keepdim=True)
        x = x / torch.where(norm > 0, norm, torch.ones_like(norm))
    gram = torch.bmm(x, x.transpose(1, 2))
    if kernel in ("linear", "cosine"):
        return gram
    if kernel == "poly":
        return (g * gram + coef0) ** degree
    if kernel == "sigmoid":
        return torch.tanh(g * gram + coef0)
    # rbf: |x_i - x_j|^2 from the Gram matrix, without the (B, N, N, F) difference tensor; rounding
    # can make it slightly negative, and the diagonal is exactly 0.
    sq = gram.diagonal(dim1=1, dim2=2)
    dist = (sq[:, :, None] + sq[:, None, :] - 2 * gram).clamp_min(0)
    dist = dist * (1 - torch.eye(dist.shape[-1], dtype=dist.dtype, device=dist.device))
    return torch.exp(-g * dist)


def kernel_pca_projection(
    activations: torch.Tensor,
    kernel: str = "sigmoid",
    gamma: Optional[float] = None,
    degree: int = 3,
    coef0: float = 1.0,
) -> torch.Tensor:
    """Each image's projection (B, *S) on the first kernel principal component of its activations (B, C, *S).

    What scikit-learn's ``KernelPCA(n_components=1, kernel=..., gamma=...).fit_transform`` gives
    for one image's (positions, channels) matrix, computed for the whole batch at once: the
    kernel matrix K of the centred samples is double-centred, K_c = (I - 1/N) K (I - 1/N), its
    largest eigenpair (lambda, v) is taken, and the projection is sqrt(lambda) v. The sign makes
    the entry of largest magnitude positive (scikit-learn's ``svd_flip`` rule). Cost: one
    ``torch.linalg.eigh`` of an N x N matrix per image, N = the number of positions.
    """
    check_kernel(kernel, gamma)
    if not torch.is_tensor(activations) or activations.ndim < 3:
        shape = tuple(activations.shape) if hasattr(activations, "shape") else type(activations).__name__
        raise ValueError(f"activations must be (B, C, *spatial) with at least one spatial dimension, got {shape}")
    b, c = activations.shape[:2]
    spatial = activations.shape[2:]
    work_dtype = activations.dtype if activations.dtype == torch.float64 else torch.float32
    x = activations.to(work_dtype)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    samples = x.reshape(b, c, -1).transpose(1, 2)  # (B, N, C)
    samples = samples - samples.mean(dim=1, keepdim=True)
    k = pairwise_kernel(samples, kernel, gamma, degree, coef0)
    k = k - k.mean(dim=1, keepdim=True) - k.mean(dim=2, keepdim=True) + k.mean(dim=(1, 2), keepdim=True)
    k = 0.5 * (k + k.transpose(1, 2))  # exact symmetry for eigh
    eigvals, eigvecs = torch.linalg.eigh(k)  # ascending
    # The centred kernel has eigenvalue 0 on the constant vector, so the largest is >= 0 up to rounding.
    top = eigvecs[:, :, -1] * eigvals[:, -1:].clamp_min(0).sqrt()
    peak = top.gather(1, top.abs().argmax(dim=1, keepdim=True))
    top = torch.where(peak < 0, -top, top)
    return top.reshape(b, *spatial).to(activations.dtype if activations.is_floating_point() else work_dtype)


def _dispatch(fn: Callable[[torch.Tensor], torch.Tensor], activation_batch: ArrayLike) -> ArrayLike:
    """Run a torch projection on numpy or torch input and return the input's kind."""
    if torch.is_tensor(activation_batch):
        x = activation_batch.detach()
        if not x.is_floating_point():
            x = x.float()
        as_numpy = False
    elif isinstance(activation_batch, np.ndarray):
        arr = activation_batch if activation_batch.dtype == np.float64 else activation_batch.astype(np.float32)
        x = torch.from_numpy(np.ascontiguousarray(arr))
        as_numpy = True
    else:
        raise TypeError(
            f"activation_batch must be a numpy array or a torch tensor of shape (B, C, *spatial), "
            f"got {type(activation_batch).__name__}"
        )
    if x.ndim < 3:
        raise ValueError(
            f"activation_batch must be (B, C, *spatial), e.g. (B, C, H, W), got shape {tuple(x.shape)}; "
            "add the batch dimension with [None] for a single image"
        )
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    out = fn(x)
    return out.cpu().numpy().astype(np.float32) if as_numpy else out


def get_2d_projection(activation_batch: ArrayLike) -> ArrayLike:
    """Projection (B, *S) of each image's centred activations on their first principal component.

    pytorch-grad-cam's version has an arbitrary (LAPACK-dependent) sign; this one is sign-corrected
    (largest magnitude positive), i.e. identical to ``get_2d_projection_with_sign_correction``.
    """
    return _dispatch(first_principal_component, activation_batch)


def get_2d_projection_with_sign_correction(activation_batch: ArrayLike) -> ArrayLike:
    """Projection (B, *S) on the first principal component, flipped when its most negative value
    outweighs its most positive one (Chung & Ying, "Seg-Eigen-CAM", Appl. Sci. 2025, Eq. 13)."""
    return _dispatch(first_principal_component, activation_batch)


def get_2d_projection_kernel(
    activation_batch: ArrayLike, kernel: str = "sigmoid", gamma: Optional[float] = None
) -> ArrayLike:
    """Projection (B, *S) of each image's centred activations on their first kernel principal component.

    ``kernel`` is one of ``KERNELS`` with scikit-learn's definitions and defaults (gamma = 1 /
    channels, degree 3, coef0 1); see ``kernel_pca_projection``. Used by KPCA-CAM.
    """
    check_kernel(kernel, gamma)
    return _dispatch(lambda x: kernel_pca_projection(x, kernel, gamma), activation_batch)
