"""NMF for Deep Feature Factorization: pytorch_cam's torch solver against scikit-learn's, on real DFF matrices.

    python -m benchmarks.nmf                     # CPU, 1 thread each, the default matrices
    python -m benchmarks.nmf --threads 2 --reps 9
    python -m benchmarks.nmf --devices cpu cuda  # also time ours on the GPU (sklearn stays on the CPU)

The matrices are what DFF factorises: a layer's activations for a batch, one row per channel and
one column per (image, position), each row shifted by its minimum (pytorch-grad-cam's
preprocessing). The layers are layer4 of torchvision's resnet18 and resnet50 (random weights,
seed 0) on the bundled photo at 224x224, alone and with three variants (flipped, mirrored,
cropped): (512 | 2048, 49 | 196) matrices. Ranks 5 (``run_dff_on_image``'s default) and 16
(``DeepFeatureFactorization``'s).

scikit-learn runs as pytorch-grad-cam calls it: ``NMF(n_components=k, init='random',
random_state=0)``, i.e. coordinate descent, tol 1e-4, at most 200 iterations, on float32. Ours is
``pytorch_cam.utils.nmf.nmf(V, k)`` with its defaults. Both are timed as the best of ``--reps``
runs after a warm-up, with the same number of threads (torch's intra-op threads and the BLAS pool
scikit-learn uses).

Columns: the relative reconstruction error ||V - W H||_F / ||V||_F of each, their ratio (target:
<= 1.02), the times and the speed-up (target: > 1), the sweeps each ran, and "maps r": the mean
correlation of the concept maps (rows of H) after matching ours to scikit-learn's one to one
(NMF is not unique, so this is informative, not a target).

A last table factorises 8 images one by one (per-image DFF, (512, 49) each): scikit-learn in a
loop against one batched call of ours.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torchvision

from pytorch_cam.utils.image import IMAGENET_MEAN, IMAGENET_STD, load_image, preprocess_image
from pytorch_cam.utils.nmf import nmf, relative_error

PHOTO = Path(__file__).resolve().parents[1] / "usage_examples" / "images" / "chelsea.png"
RANKS = (5, 16)


def photo_variants(size: int = 224) -> List[np.ndarray]:
    """The photo and three variants (flipped, mirrored, zoomed on the face), float RGB (size, size, 3)."""
    img = load_image(str(PHOTO))
    h, w = img.shape[:2]
    crops = [img, img[::-1], img[:, ::-1], img[h // 4 :, w // 4 :]]
    return [cv2.resize(np.ascontiguousarray(c), (size, size), interpolation=cv2.INTER_AREA) for c in crops]


def dff_matrix(arch: str, images: Sequence[np.ndarray]) -> np.ndarray:
    """layer4 activations of ``images`` as DFF factorises them: (C, B*h*w), rows shifted to min 0."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    store: Dict[str, torch.Tensor] = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.no_grad():
            model(torch.cat([preprocess_image(im, mean=IMAGENET_MEAN, std=IMAGENET_STD) for im in images]))
    finally:
        handle.remove()
    acts = store["a"].numpy()
    matrix = acts.transpose(1, 0, 2, 3).reshape(acts.shape[1], -1)
    return np.ascontiguousarray(matrix - matrix.min(axis=1, keepdims=True), dtype=np.float32)


def best_time(fn: Callable[[], object], reps: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def sklearn_nmf(V: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray, int]:
    from sklearn.decomposition import NMF

    model = NMF(n_components=k, init="random", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter, as in pytorch-grad-cam
        W = model.fit_transform(V)
    return W, model.components_, int(model.n_iter_)


def sklearn_loop(batch: np.ndarray, k: int) -> list:
    return [sklearn_nmf(v, k) for v in batch]


def _no_sync() -> None:
    pass


def rel_err(V: np.ndarray, W: np.ndarray, H: np.ndarray) -> float:
    V64 = V.astype(np.float64)
    return float(np.linalg.norm(V64 - W.astype(np.float64) @ H.astype(np.float64)) / np.linalg.norm(V64))


def matched_map_correlation(H_ours: np.ndarray, H_ref: np.ndarray) -> float:
    """Mean Pearson correlation of the rows of H after the best one-to-one matching."""
    from scipy.optimize import linear_sum_assignment

    a = H_ours - H_ours.mean(axis=1, keepdims=True)
    b = H_ref - H_ref.mean(axis=1, keepdims=True)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    corr = a @ b.T
    rows, cols = linear_sum_assignment(-corr)
    return float(corr[rows, cols].mean())


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--images", nargs="+", type=int, default=[1, 4], choices=[1, 2, 3, 4])
    ap.add_argument("--ranks", nargs="+", type=int, default=list(RANKS))
    ap.add_argument("--reps", type=int, default=7, help="timed runs per cell (the best is kept)")
    ap.add_argument("--threads", type=int, default=1, help="threads for torch and for scikit-learn's BLAS")
    ap.add_argument("--devices", nargs="+", default=["cpu"], choices=["cpu", "cuda"])
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    devices = [torch.device(d) for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s)\n")
    variants = photo_variants()

    worst_ratio, slowest = 0.0, float("inf")
    header = (
        "| model | images | V (C, N) | rank | device | error sklearn | error ours | ours/sklearn | "
        "time sklearn | time ours | speed-up | sweeps sklearn / ours | maps r |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for arch in args.archs:
        for n_images in args.images:
            V = dff_matrix(arch, variants[:n_images])
            for k in args.ranks:
                t_sk = best_time(partial(sklearn_nmf, V, k), args.reps, _no_sync)
                W_sk, H_sk, it_sk = sklearn_nmf(V, k)
                e_sk = rel_err(V, W_sk, H_sk)
                for device in devices:
                    Vt = torch.from_numpy(V).to(device)
                    sync = torch.cuda.synchronize if device.type == "cuda" else _no_sync
                    t_ours = best_time(partial(nmf, Vt, k), args.reps, sync)
                    W, H, it = nmf(Vt, k, return_n_iter=True)
                    W, H = W.cpu().numpy(), H.cpu().numpy()
                    e_ours = rel_err(V, W, H)
                    ratio, speedup = e_ours / e_sk, t_sk / t_ours
                    worst_ratio = max(worst_ratio, ratio)
                    slowest = min(slowest, speedup)
                    print(
                        f"| {arch} | {n_images} | {V.shape} | {k} | {device.type} | {e_sk:.4f} | {e_ours:.4f} | "
                        f"{ratio:.4f} | {t_sk * 1e3:.1f} ms | {t_ours * 1e3:.1f} ms | {speedup:.2f}x | "
                        f"{it_sk} / {it} | {matched_map_correlation(H, H_sk):.3f} |",
                        flush=True,
                    )

    # Per-image factorisation of 8 images: a loop for scikit-learn, one batched call for ours.
    views = variants + [np.ascontiguousarray(v[:, ::-1]) for v in variants]
    arch = args.archs[0]
    batch = np.stack([dff_matrix(arch, [v]) for v in views])  # (8, C, 49)
    print(f"\nPer-image DFF of {len(views)} images, {arch} layer4, one (C, h*w) matrix each:\n")
    print(
        "| rank | device | mean error sklearn | mean error ours | ours/sklearn | time sklearn (loop) | "
        "time ours (batched) | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k in args.ranks:
        t_sk = best_time(partial(sklearn_loop, batch, k), max(1, args.reps // 2), _no_sync)
        e_sk = float(np.mean([rel_err(v, *sklearn_nmf(v, k)[:2]) for v in batch]))
        for device in devices:
            Vb = torch.from_numpy(batch).to(device)
            sync = torch.cuda.synchronize if device.type == "cuda" else _no_sync
            t_ours = best_time(partial(nmf, Vb, k), max(1, args.reps // 2), sync)
            W, H = nmf(Vb, k)
            e_ours = float(relative_error(Vb.double(), W.double(), H.double()).mean())
            print(
                f"| {k} | {device.type} | {e_sk:.4f} | {e_ours:.4f} | {e_ours / e_sk:.4f} | {t_sk * 1e3:.1f} ms | "
                f"{t_ours * 1e3:.1f} ms | {t_sk / t_ours:.2f}x |",
                flush=True,
            )

    print(f"\nworst error ratio ours/sklearn: {worst_ratio:.4f} (target <= 1.02)")
    print(f"smallest speed-up: {slowest:.2f}x (target > 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
