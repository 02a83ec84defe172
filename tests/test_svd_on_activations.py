"""pytorch_cam.utils.svd_on_activations: kernel PCA against scikit-learn's KernelPCA, the linear
projections against pytorch-grad-cam 1.5.7, numpy/torch in and out, NaN handling, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytorch_cam.utils.svd_on_activations import (
    KERNELS,
    get_2d_projection,
    get_2d_projection_kernel,
    get_2d_projection_with_sign_correction,
    pairwise_kernel,
)


def activations(shape=(3, 12, 5, 6), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def sklearn_projection(batch: np.ndarray, kernel: str, gamma=None) -> np.ndarray:
    from sklearn.decomposition import KernelPCA

    out = []
    for img in batch:
        samples = img.reshape(img.shape[0], -1).T
        samples = samples - samples.mean(axis=0)
        proj = KernelPCA(n_components=1, kernel=kernel, gamma=gamma).fit_transform(samples)
        out.append(proj.reshape(img.shape[1:]))
    return np.float32(out)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_projection_matches_sklearn(kernel):
    pytest.importorskip("sklearn")
    a = activations()
    ours = get_2d_projection_kernel(a, kernel)
    assert ours.dtype == np.float32 and ours.shape == (3, 5, 6)
    ref = sklearn_projection(a, kernel)
    # scikit-learn's sign is deterministic (svd_flip) and ours follows the same rule.
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("kernel, gamma", [("rbf", 0.3), ("poly", 0.05), ("sigmoid", 0.02)])
def test_kernel_projection_gamma_and_many_positions(kernel, gamma):
    # 15 x 15 = 225 positions: scikit-learn switches to ARPACK above 200 samples; same result.
    pytest.importorskip("sklearn")
    a = activations((2, 8, 15, 15), seed=1)
    ref = sklearn_projection(a, kernel, gamma)
    np.testing.assert_allclose(get_2d_projection_kernel(a, kernel, gamma), ref, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("kernel", KERNELS)
def test_pairwise_kernel_definitions(kernel):
    pytest.importorskip("sklearn")
    from sklearn.metrics.pairwise import pairwise_kernels

    x = activations((2, 7, 4), seed=2).astype(np.float64)  # (B, N, F)
    ours = pairwise_kernel(torch.from_numpy(x), kernel).numpy()
    params = {"gamma": 1 / 4, "degree": 3, "coef0": 1} if kernel in ("poly", "rbf", "sigmoid") else {}
    for b in range(2):
        ref = pairwise_kernels(x[b], metric=kernel, filter_params=True, **params)
        np.testing.assert_allclose(ours[b], ref, rtol=1e-10, atol=1e-12)


def test_cosine_kernel_zero_row():
    x = torch.zeros(1, 3, 2, dtype=torch.float64)
    x[0, 0] = torch.tensor([3.0, 4.0])
    k = pairwise_kernel(x, "cosine")
    assert k[0, 0, 0] == 1 and torch.all(k[0, 1:] == 0) and torch.all(k[0, :, 1:] == 0)


def test_linear_projections_match_grad_cam():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils import svd_on_activations as peer

    a = activations((4, 10, 6, 5), seed=3)
    corrected = get_2d_projection_with_sign_correction(a)
    tol = 1e-4 * np.abs(corrected).max()  # float32 SVDs of two libraries
    np.testing.assert_allclose(corrected, peer.get_2d_projection_with_sign_correction(a), atol=tol)
    # The peer's plain projection has whatever sign LAPACK returns; ours is the corrected one.
    plain = get_2d_projection(a)
    np.testing.assert_array_equal(plain, corrected)
    theirs = peer.get_2d_projection(a)
    for ours_i, theirs_i in zip(plain, theirs):
        sign = np.sign((ours_i * theirs_i).sum())
        np.testing.assert_allclose(ours_i, sign * theirs_i, atol=tol)
    flat = plain.reshape(len(plain), -1)
    assert np.all(np.abs(flat).argmax(axis=1) == flat.argmax(axis=1))  # largest magnitude positive


def test_kernel_sign_rule():
    for kernel in KERNELS:
        flat = get_2d_projection_kernel(activations(seed=4), kernel).reshape(3, -1)
        assert np.all(flat[np.arange(3), np.abs(flat).argmax(axis=1)] > 0)


@pytest.mark.parametrize(
    "fn", [get_2d_projection, get_2d_projection_with_sign_correction, lambda a: get_2d_projection_kernel(a, "rbf")]
)
def test_numpy_and_torch_in_and_out(fn):
    a = activations((2, 6, 4, 5), seed=5)
    out_np = fn(a)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32 and out_np.shape == (2, 4, 5)
    out_64 = fn(a.astype(np.float64))
    assert out_64.dtype == np.float32
    np.testing.assert_allclose(out_64, out_np, atol=1e-4)
    out_t = fn(torch.from_numpy(a))
    assert torch.is_tensor(out_t) and out_t.dtype == torch.float32 and out_t.shape == (2, 4, 5)
    np.testing.assert_allclose(out_t.numpy(), out_np, atol=1e-6)
    # Volumes (B, C, D, H, W) project position by position too.
    assert fn(activations((2, 6, 3, 4, 5), seed=6)).shape == (2, 3, 4, 5)


@pytest.mark.parametrize(
    "fn", [get_2d_projection, get_2d_projection_with_sign_correction, lambda a: get_2d_projection_kernel(a, "sigmoid")]
)
def test_nan_counts_as_zero_and_input_is_untouched(fn):
    a = activations((2, 6, 4, 5), seed=7)
    a[0, 2, 1, 3] = np.nan
    a[1, :, 0, 0] = np.nan
    before = a.copy()
    out = fn(a)
    np.testing.assert_array_equal(a, before)  # NaN == NaN under assert_array_equal
    np.testing.assert_allclose(out, fn(np.nan_to_num(a, nan=0.0)), atol=1e-6)
    assert np.isfinite(out).all()


def test_errors():
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        get_2d_projection(np.zeros((4, 5), np.float32))
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        get_2d_projection_kernel([[[0.0]]])
    with pytest.raises(ValueError, match="'rbf'"):
        get_2d_projection_kernel(activations(), kernel="laplacian")
    with pytest.raises(ValueError, match="gamma"):
        get_2d_projection_kernel(activations(), kernel="rbf", gamma=-1)
