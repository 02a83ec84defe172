"""CSKIP fidelity: how close the Score-CAM map stays to vanilla as fewer channels are scored.

    python -m benchmarks.cskip_fidelity [--n 128] [--out docs/cskip_fidelity.png]

On the trained scenes CNN (benchmarks.scenes) and ``--n`` synthetic scenes, for kept-channel
ratios 1, 1/2, ..., 1/32 and both channel rankings (``max``: largest maximum activation, as in
the scorecam-pytorch seed; ``std``: largest standard deviation, the Keras seed's ``max_N``),
prints a markdown table of the SSIM between the CSKIP map and the vanilla map (mean and 5th
percentile over images, data_range=1) and the run time, saves a plot, and recommends the
smallest ratio whose mean SSIM is >= 0.95 ("the same map").
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from typing import List, Optional

import numpy as np
import torch
from skimage.metrics import structural_similarity

from benchmarks.scenes import load_trained_cnn
from pytorch_cam import ScoreCAM
from pytorch_cam.metrics import pointing_game
from pytorch_cam.utils.scenes import generate_scenes

RATIOS = [1.0, 3 / 4, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32]
SAME_MAP = 0.95


def frac(ratio: float) -> str:
    return str(Fraction(ratio).limit_denominator(64))


def ssim_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b)])


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128, help="number of images (>= 100 for the study)")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--model-path", default=None, help="cached scenes CNN (default: benchmarks.scenes' own)")
    ap.add_argument("--out", default="docs/cskip_fidelity.png")
    args = ap.parse_args(argv)

    model = load_trained_cnn(args.model_path)
    layer = model.target_layer
    images, labels, masks = generate_scenes(args.n, seed=args.seed)
    targets = labels.tolist()
    with torch.inference_mode():
        channels = model.features(images[:1]).shape[1]

    def pointing(maps: np.ndarray) -> float:
        return float(pointing_game(torch.from_numpy(maps), masks, tolerance=2).mean())

    ScoreCAM(model, [layer], progress=False)(images[:8], targets=targets[:8])  # warm-up, not timed
    t = time.perf_counter()
    vanilla = ScoreCAM(model, [layer], progress=False)(images, targets=targets)
    t_vanilla = time.perf_counter() - t

    rows = []
    for rank in ("max", "std"):
        for ratio in RATIOS:
            cam = ScoreCAM(model, [layer], cskip=ratio, cskip_rank=rank, progress=False)
            t = time.perf_counter()
            maps = cam(images, targets=targets)
            seconds = time.perf_counter() - t
            s = ssim_per_image(maps, vanilla)
            k = max(1, int(np.ceil(ratio * channels)))
            rows.append((rank, ratio, k, s.mean(), np.percentile(s, 5), seconds, pointing(maps)))

    print(
        f"Scenes CNN, layer features[-1] ({channels} channels), {args.n} images of 64x64; "
        f"vanilla Score-CAM {t_vanilla:.2f} s, pointing game {pointing(vanilla):.3f}\n"
    )
    print("| rank | kept ratio | K | mean SSIM | 5th pct SSIM | pointing game | time | speed-up vs vanilla |")
    print("|---|---|---|---|---|---|---|---|")
    for rank, ratio, k, mean, p5, seconds, pg in rows:
        print(
            f"| {rank} | {frac(ratio)} | {k} | {mean:.3f} | {p5:.3f} | {pg:.3f} | {seconds:.2f} s "
            f"| {t_vanilla / seconds:.1f}× |"
        )

    best = {}
    for rank in ("max", "std"):
        ok = [r for r in rows if r[0] == rank and r[3] >= SAME_MAP]
        best[rank] = min(ok, key=lambda r: r[1])
    winner = min(best.values(), key=lambda r: (r[1], -r[3]))
    print(
        f"\nSmallest kept ratio with mean SSIM >= {SAME_MAP}: max rank {frac(best['max'][1])}, "
        f"std rank {frac(best['std'][1])}. Recommended: cskip_rank={winner[0]!r}, "
        f"cskip={frac(winner[1])} of the channels (K={winner[2]} of {channels} here)."
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for rank, marker in (("max", "o"), ("std", "s")):
        r = [row for row in rows if row[0] == rank]
        x = [row[1] for row in r]
        ax1.plot(x, [row[3] for row in r], marker=marker, label=f"{rank}: mean")
        ax1.plot(x, [row[4] for row in r], marker=marker, linestyle=":", label=f"{rank}: 5th percentile")
        ax2.plot(x, [row[5] for row in r], marker=marker, label=rank)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("kept-channel ratio")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.axhline(SAME_MAP, color="grey", linestyle="--")
    ax1.set_ylabel("SSIM(CSKIP map, vanilla map)")
    ax2.axhline(t_vanilla, color="grey", linestyle="--")
    ax2.set_ylabel("run time (s)")
    fig.suptitle(f"CSKIP fidelity, scenes CNN, {args.n} images")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"\nPlot: {args.out}")


if __name__ == "__main__":
    main()
