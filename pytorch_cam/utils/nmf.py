"""Non-negative matrix factorisation in torch, batched, on the input's device.

    V (m, n) >= 0  ~  W (m, r) @ H (r, n),   W, H >= 0,   minimising ||V - W H||_F^2

Solver: HALS, hierarchical alternating least squares (Cichocki & Phan, "Fast local algorithms for
large scale nonnegative matrix and tensor factorizations", IEICE Trans. Fundamentals 2009; the
same exact coordinate descent as scikit-learn's default ``solver='cd'``, Hsieh & Dhillon, KDD 2011).
Each sweep solves for one row of H (then one column of W) at a time in closed form with the others
fixed, and projects on the non-negative orthant:

    H[j] <- max(0, H[j] + ((W^T V)[j] - (W^T W)[j] H) / (W^T W)[j, j])

which only needs the small Gram matrices W^T W (r, r) and W^T V (r, n) per sweep, so a sweep costs
two (m, n, r) matrix products plus O(r^2 (m + n)).

Acceleration: Ang & Gillis' extrapolation with restarts (HER, "Accelerating nonnegative matrix
factorization algorithms using extrapolation", Neural Computation 2019), which typically halves the
number of sweeps (see ``_hals``).

Initialisation: scikit-learn's ``init='random'`` (|N(0, 1)| * sqrt(mean(V) / r)) from a private
generator with a fixed seed, so results are deterministic and the global RNG is untouched.
NNDSVD / NNDSVDa (Boutsidis & Gallopoulos, "SVD based initialization: A head start for nonnegative
matrix factorization", Pattern Recognition 2008; the few singular triplets from a seeded randomised
range finder) are available; on DFF matrices they save a few sweeps on average but HALS from them
stalls more often on a plateau, so they are not the default.

Versus scikit-learn's ``NMF(init='random', random_state=0)`` (what pytorch-grad-cam's DFF calls) on
DFF matrices (ResNet/VGG activations, ranks 2 to 16): the same reconstruction error within 0.5 %,
in 35-70 % of its sweeps. A sweep costs more Python dispatch than scikit-learn's Cython loop, so
on the CPU ours is faster on larger matrices and ranks and slower on the smallest ones
(``python -m benchmarks.nmf``).

The factorisation of a non-negative matrix is not unique (W D, D^-1 H for any positive diagonal
D, and genuinely different local optima), so compare reconstructions, not factors.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch

__all__ = ["nmf", "relative_error"]

_INITS = ("nndsvda", "nndsvd", "random")
_TINY = 1e-30
# Proximal weight of the HALS row update (see _scaled_gram): negligible next to any live component.
_DELTA = 1e-20
# Below this relative error, HER decides on exact residuals (see _hals).
_EXACT_BELOW = 1e-2


def relative_error(V: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """||V - W H||_F / ||V||_F per matrix: shape () for 2-D input, (B,) for a batch."""
    residual = V - W @ H
    num = torch.linalg.matrix_norm(residual)
    den = torch.linalg.matrix_norm(V)
    return num / torch.where(den > 0, den, torch.ones_like(den))


def nmf(
    V: torch.Tensor,
    rank: int,
    max_iter: int = 200,
    tol: float = 1e-4,
    init: Union[str, Tuple[torch.Tensor, torch.Tensor]] = "random",
    check_every: int = 10,
    seed: int = 0,
    extrapolate: bool = True,
    return_n_iter: bool = False,
):
    """Factorise a non-negative matrix (m, n), or a batch of them (B, m, n), as W @ H.

    Args:
        V: non-negative, finite float tensor (m, n) or (B, m, n). Half precision is computed in
            float32 and cast back.
        rank: the number of components r >= 1 (may exceed min(m, n); with an NNDSVD init the
            components beyond the SVD's rank then start from a seeded random draw).
        max_iter: the maximum number of HALS sweeps (one update of H and one of W).
        tol: stop when, over each of the last two windows of ``check_every`` sweeps, the
            reconstruction error ||V - W H||_F fell by less than ``tol * ||V||_F``, for every
            matrix of the batch. ``tol=0`` runs ``max_iter`` sweeps.
        init: ``"random"`` (default: scikit-learn's ``init='random'`` scaling), ``"nndsvd"``,
            ``"nndsvda"`` (NNDSVD with the zeros filled with mean(V)), or a ``(W0, H0)`` pair of
            tensors. All deterministic: draws come from a private generator seeded with ``seed``.
        check_every: sweeps between two exact error evaluations (each costs one (m, n, r) product
            and one host sync). The best checked pair is returned.
        seed: the seed of the random draws (randomised SVD, ``init="random"``, components beyond
            min(m, n)).
        extrapolate: accelerate the sweeps with HER (default); ``False`` runs plain HALS, whose
            error never increases from one sweep to the next.
        return_n_iter: also return the number of sweeps run.

    Returns:
        ``(W, H)`` with W (..., m, r) and H (..., r, n), non-negative, in V's dtype and device;
        ``(W, H, n_iter)`` with ``return_n_iter``.
    """
    V, squeeze = _check(V, rank, max_iter, tol, check_every)
    out_dtype = V.dtype
    if V.dtype not in (torch.float32, torch.float64):
        V = V.float()
    W, H = _initial_factors(V, rank, init, seed, squeeze)
    if V.shape[0] == 1:  # a lone matrix: the 2-D kernels are cheaper
        V, W, H = V[0], W[0], H[0]
    # Rows of Wt are the columns of W, so both half-sweeps update contiguous rows.
    # inference_mode, not no_grad: the sweeps are dozens of tiny ops, and skipping autograd's version
    # bookkeeping saves ~20 % on small matrices. The results are cloned out of inference mode so
    # callers may use them freely (in place, or in autograd).
    with torch.inference_mode():
        Wt, H, n_iter = _hals(V, W.mT.contiguous(), H.contiguous(), max_iter, tol, check_every, extrapolate)
    W = Wt.mT.to(out_dtype).clone()
    H = H.to(out_dtype).clone()
    if W.ndim == 2 and not squeeze:
        W, H = W[None], H[None]
    return (W, H, n_iter) if return_n_iter else (W, H)


def _check(V: torch.Tensor, rank: int, max_iter: int, tol: float, check_every: int) -> Tuple[torch.Tensor, bool]:
    if not torch.is_tensor(V):
        raise TypeError(f"V must be a torch.Tensor, got {type(V).__name__}; use torch.from_numpy for arrays")
    if V.ndim not in (2, 3):
        raise ValueError(f"V must be a matrix (m, n) or a batch of matrices (B, m, n), got shape {tuple(V.shape)}")
    if not V.is_floating_point():
        raise TypeError(f"V must be a floating point tensor, got {V.dtype}; convert it with V.float()")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank (the number of components) must be an integer >= 1, got {rank!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if V.numel() == 0:
        raise ValueError(f"V is empty (shape {tuple(V.shape)}); there is nothing to factorise")
    low, high = torch.aminmax(V)  # one pass; NaN propagates into both
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise ValueError("V contains NaN or Inf; clean it first, e.g. with torch.nan_to_num")
    if bool(low < 0):
        raise ValueError(
            f"NMF needs a non-negative matrix, but V has entries down to {float(low):.4g}; shift or "
            "clip it first (e.g. V - V.amin(dim=-1, keepdim=True), or V.clamp(min=0) after a ReLU)"
        )
    squeeze = V.ndim == 2
    return (V[None] if squeeze else V), squeeze


def _residual_norm(V: torch.Tensor, Wt: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """||V - W H||_F, shaped (1, 1) or (B, 1, 1) to broadcast against the factors."""
    return torch.linalg.matrix_norm(_addmm(V, Wt.mT, H, beta=1, alpha=-1), keepdim=True)


def _hals(
    V: torch.Tensor,
    Wt: torch.Tensor,
    H: torch.Tensor,
    max_iter: int,
    tol: float,
    check_every: int,
    extrapolate: bool,
) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """HALS sweeps from (Wt, H) on a matrix (m, n) or a batch (B, m, n).

    A lone matrix takes the cheaper 2-D kernels. With ``extrapolate``, Ang & Gillis' HER
    ("Accelerating nonnegative matrix factorization algorithms using extrapolation", Neural
    Computation 2019): each sweep starts from extrapolated points X^ = max(0, X + beta (X - X_prev)).
    beta grows (x1.05, capped by beta_max, which itself grows x1.01 up to 1) while the error
    decreases; when it increases, the next sweep restarts from the plain iterates, beta shrinks
    (/1.5) and beta_max falls back to the previous beta. Decided per matrix with tensor ops, so
    there is no host sync per sweep. The best pair seen is returned.
    """
    Vt = V.mT.contiguous()
    # Two buffers per factor, each with its row views made once (indexing a row per update would
    # cost as much as the update): one holds the sweep's start X^, updated in place into X_new, the
    # other X_prev, then the next start.
    h_bufs = [H.clone(), H.clone()]
    w_bufs = [Wt.clone(), Wt.clone()]
    h_rows = [_rows(x) for x in h_bufs]
    w_rows = [_rows(x) for x in w_bufs]
    h_tmp = torch.empty_like(h_rows[0][0])
    w_tmp = torch.empty_like(w_rows[0][0])
    eye = torch.eye(H.shape[-2], dtype=V.dtype, device=V.device)
    scale = torch.linalg.matrix_norm(V, keepdim=True)  # tol is relative to ||V||
    norm_v2 = scale.square()
    best = last_check = _residual_norm(V, Wt, H)
    stalled_before = torch.zeros_like(best, dtype=torch.bool)
    err2 = best_err2 = best.square()
    Wt_best, H_best = Wt.clone(), H.clone()
    exact = False
    beta = torch.full_like(best, 0.5)
    beta_last = beta
    beta_max = torch.ones_like(best)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        cur, prev = n_iter % 2, (n_iter + 1) % 2
        H_new, Wt_new = h_bufs[cur], w_bufs[cur]
        _sweep(H_new, h_rows[cur], *_scaled_gram(Wt_new @ Wt_new.mT, Wt_new @ V, eye), h_tmp)
        if extrapolate:
            step = beta + 1.0
            H_ext = torch.lerp(h_bufs[prev], H_new, step).clamp_(min=0)  # X + beta (X - X_prev), projected
        else:
            H_ext = H_new
        cross, gram_h = H_ext @ Vt, H_ext @ H_ext.mT
        _sweep(Wt_new, w_rows[cur], *_scaled_gram(gram_h, cross, eye), w_tmp)
        # (W_new, H_ext) is a consistent pair: W_new is the best response to H_ext.
        if extrapolate:
            Wt_ext = torch.lerp(w_bufs[prev], Wt_new, step).clamp_(min=0)
            if exact:
                new_err2 = _residual_norm(V, Wt_new, H_ext).square()
            else:
                # ||V - W H||^2 = ||V||^2 - <W^T, 2 H V^T - (H H^T) W^T> from the products at hand,
                # without the (m, n) residual; in float32 it is only good down to ~1e-3 ||V||.
                new_err2 = norm_v2 - _inner(Wt_new, _addmm(cross, gram_h, Wt_new, beta=2, alpha=-1))
            ok = new_err2 <= err2
            beta, beta_last, beta_max = (
                torch.where(ok, torch.minimum(beta_max, beta * 1.05), beta / 1.5),
                beta,
                torch.where(ok, (beta_max * 1.01).clamp_(max=1.0), beta_last),
            )
            # The next start overwrites X_prev, no longer needed.
            torch.where(ok, H_ext, H_new, out=h_bufs[prev])
            torch.where(ok, Wt_ext, Wt_new, out=w_bufs[prev])
            err2 = new_err2
            # An extrapolated pair can overshoot for a sweep before beta shrinks: keep the best.
            better = err2 < best_err2
            best_err2 = torch.minimum(best_err2, err2)
            torch.where(better, Wt_new, Wt_best, out=Wt_best)
            torch.where(better, H_ext, H_best, out=H_best)
        else:
            h_bufs[prev].copy_(H_new)
            w_bufs[prev].copy_(Wt_new)
        if n_iter % check_every == 0 or n_iter == max_iter:
            now = _residual_norm(V, Wt_new, H_ext)
            if extrapolate:
                # Exact errors of the kept pair and the current one; the current one wins if it is
                # really better (the estimate above is noisy near an exact fit).
                kept = _residual_norm(V, Wt_best, H_best)
                better = now < kept
                torch.where(better, Wt_new, Wt_best, out=Wt_best)
                torch.where(better, H_ext, H_best, out=H_best)
                best = torch.minimum(now, kept)
                best_err2 = best.square()
                # Near an exact fit the estimate is noise: from here on, exact residuals.
                if not exact and bool((best < _EXACT_BELOW * scale).any()):
                    exact, err2 = True, now.square()
            else:  # plain HALS never increases the error: the last pair is the best
                best = now
                Wt_best.copy_(Wt_new)
                H_best.copy_(H_new)
            # One host sync per check_every sweeps.
            # Stop after two windows in a row without progress: HALS can stall for ~10 sweeps and
            # then move on (a component being traded between two parts of the data).
            stalled = (last_check - best) < tol * scale
            if tol > 0 and bool((stalled & stalled_before).all()):
                break
            last_check, stalled_before = best, stalled
    return Wt_best.clone(), H_best.clone(), n_iter


def _addmm(inp: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """beta * inp + alpha * (a @ b) for matrices or batches of them."""
    fn = torch.addmm if inp.ndim == 2 else torch.baddbmm
    return fn(inp, a, b, beta=beta, alpha=alpha)


def _rows(X: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Views of the rows of X: 1-D rows of a matrix (r, p), (B, 1, p) slices of a batch (B, r, p)."""
    return X.unbind(0) if X.ndim == 2 else X.split(1, dim=1)


def _scaled_gram(gram: torch.Tensor, cross: torch.Tensor, eye: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rewrite the HALS row update as X[j] <- max(0, rhs[j] - A[j] @ X): two kernels per row.

    With d = diag(gram) + delta: A = gram / d - I and rhs = cross / d. Up to the tiny proximal
    weight delta, this is the update of the module docstring (A[j] @ X then counts X[j]'s own term
    once, negatively: X[j] + (cross[j] - gram[j] @ X) / d[j]). delta decides the dead case: when
    the other factor's row is zero (diag = 0), the row keeps its value instead of dying, and comes
    back once the other factor's row does (scikit-learn's coordinate descent skips it likewise).
    """
    inv = (gram.diagonal(dim1=-2, dim2=-1) + _DELTA).reciprocal_().unsqueeze_(-1)
    return torch.addcmul(-eye, gram, inv), cross * inv


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> of each matrix, shaped (1, 1) or (B, 1, 1) to broadcast against the factors."""
    if a.ndim == 2:
        return torch.vdot(a.reshape(-1), b.reshape(-1)).reshape(1, 1)
    return (a * b).sum(dim=(-2, -1), keepdim=True)


def _sweep(
    X: torch.Tensor, rows: Sequence[torch.Tensor], A: torch.Tensor, rhs: torch.Tensor, tmp: torch.Tensor
) -> None:
    """One projected Gauss-Seidel pass over the rows of X, in place: each row sees the rows before it."""
    if X.ndim == 2:
        Xt = X.t()
        for row, a, r in zip(rows, A.unbind(0), rhs.unbind(0)):
            torch.addmv(r, Xt, a, alpha=-1, out=tmp)
            torch.clamp_min(tmp, 0, out=row)
    else:
        for row, a, r in zip(rows, A.split(1, dim=1), rhs.split(1, dim=1)):
            torch.baddbmm(r, a, X, alpha=-1, out=tmp)
            torch.clamp_min(tmp, 0, out=row)


def _random_factors(V: torch.Tensor, rank: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's init='random' scaling, |N(0, 1)| * sqrt(mean(V) / rank). One draw (on the CPU,
    so every device gets the same numbers) scaled per matrix: a matrix starts as it would alone."""
    b, m, n = V.shape
    gen = torch.Generator().manual_seed(seed)
    scale = (V.mean(dim=(1, 2)) / rank).sqrt()[:, None, None]
    W = torch.randn(m, rank, generator=gen, dtype=V.dtype).abs().to(V.device) * scale
    H = torch.randn(rank, n, generator=gen, dtype=V.dtype).abs().to(V.device) * scale
    return W, H


def _leading_singular_triplets(V: torch.Tensor, rank: int, seed: int, oversample: int = 10, power: int = 1):
    """The leading min(rank, m, n) singular triplets of each matrix of V (B, m, n).

    A full SVD costs O(m n min(m, n)) for the few triplets the initialisation needs, so larger
    matrices take the randomised range finder of Halko, Martinsson & Tropp ("Finding structure with
    randomness", SIAM Review 2011): an orthonormal basis Q of V's range from a seeded Gaussian
    sketch and ``power`` subspace iterations, then the exact SVD of the small Q^T V.
    """
    b, m, n = V.shape
    r = min(rank, m, n)
    q = min(r + oversample, m, n)
    if q == min(m, n):
        U, S, Vh = torch.linalg.svd(V, full_matrices=False)
        return U[..., :r], S[..., :r], Vh[..., :r, :]
    gen = torch.Generator().manual_seed(seed)
    sketch = torch.randn(n, q, generator=gen, dtype=V.dtype).to(V.device)
    Q = torch.linalg.qr(V @ sketch).Q
    for _ in range(power):
        Q = torch.linalg.qr(V.mT @ Q).Q
        Q = torch.linalg.qr(V @ Q).Q
    U, S, Vh = torch.linalg.svd(Q.mT @ V, full_matrices=False)
    return (Q @ U)[..., :r], S[..., :r], Vh[..., :r, :]


def _nndsvd(V: torch.Tensor, rank: int, fill: bool, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """NNDSVD(a) for the first min(rank, m, n) components; any further ones start random."""
    U, S, Vh = _leading_singular_triplets(V, rank, seed)
    r = S.shape[-1]
    # Each singular pair u s v^T splits into four sign blocks; keep the one with the larger mass,
    # (u+ v+) or (u- v-), normalised. For the first pair it is the Perron vector pair itself.
    u_pos, u_neg = U.clamp(min=0), (-U).clamp(min=0)
    v_pos, v_neg = Vh.clamp(min=0), (-Vh).clamp(min=0)
    nu_pos, nu_neg = torch.linalg.vector_norm(u_pos, dim=1), torch.linalg.vector_norm(u_neg, dim=1)
    nv_pos, nv_neg = torch.linalg.vector_norm(v_pos, dim=2), torch.linalg.vector_norm(v_neg, dim=2)
    mass_pos, mass_neg = nu_pos * nv_pos, nu_neg * nv_neg
    pos = mass_pos >= mass_neg  # (B, r)
    u = torch.where(pos[:, None, :], u_pos, u_neg)
    v = torch.where(pos[..., None], v_pos, v_neg)
    nu = torch.where(pos, nu_pos, nu_neg).clamp_min(_TINY)
    nv = torch.where(pos, nv_pos, nv_neg).clamp_min(_TINY)
    gain = (S * torch.where(pos, mass_pos, mass_neg)).sqrt()
    W = u * (gain / nu)[:, None, :]
    H = v * (gain / nv)[..., None]
    if rank > r:
        W_extra, H_extra = _random_factors(V, rank - r, seed)
        # Same scale as a random init of the full rank.
        shrink = math.sqrt((rank - r) / rank)
        W = torch.cat([W, W_extra * shrink], dim=2)
        H = torch.cat([H, H_extra * shrink], dim=1)
    if fill:
        mean = V.mean(dim=(1, 2))[:, None, None]
        W = torch.where(W > 0, W, mean)
        H = torch.where(H > 0, H, mean)
    return W, H


def _initial_factors(V: torch.Tensor, rank: int, init, seed: int, squeeze: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(init, str):
        if init == "random":
            return _random_factors(V, rank, seed)
        if init in ("nndsvda", "nndsvd"):
            return _nndsvd(V, rank, fill=init == "nndsvda", seed=seed)
        raise ValueError(f"init must be one of {_INITS} or a (W0, H0) pair of tensors, got {init!r}")
    try:
        W, H = init
    except (TypeError, ValueError):
        raise ValueError(
            f"init must be one of {_INITS} or a (W0, H0) pair of tensors, got {type(init).__name__}"
        ) from None
    b, m, n = V.shape
    want_w, want_h = (m, rank), (rank, n)
    W = torch.as_tensor(W).to(V.device, V.dtype)
    H = torch.as_tensor(H).to(V.device, V.dtype)
    if squeeze:
        W, H = W[None], H[None]
    if tuple(W.shape) != (b, *want_w) or tuple(H.shape) != (b, *want_h):
        raise ValueError(
            f"init=(W0, H0) must have shapes {(b, *want_w)[squeeze:]} and {(b, *want_h)[squeeze:]} for V "
            f"{tuple(V.shape)[squeeze:]} and rank {rank}; got {tuple(W.shape)[squeeze:]} and {tuple(H.shape)[squeeze:]}"
        )
    if bool((W < 0).any()) or bool((H < 0).any()) or not bool(torch.isfinite(W).all() & torch.isfinite(H).all()):
        raise ValueError("init=(W0, H0) must be finite and non-negative")
    return W.clone(), H.clone()
