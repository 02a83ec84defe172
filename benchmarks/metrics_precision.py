"""Perturbation metrics in fp32 vs bf16: time and method ranking on the trained scenes CNN.

    python -m benchmarks.metrics_precision                       # 32 scenes, 3 repetitions
    python -m benchmarks.metrics_precision --n 64 --reps 5 --methods gradcam scorecam eigencam

Each CAM method explains the ground-truth class of ``--n`` test scenes (fp32 maps, computed once).
The same maps are then scored by ROAD (``road_score``: MoRF and LeRF at 9 percentiles), deletion
AUC and the confidence metrics (``masked_scores``) in every configuration: fp32 (the default, exact),
fp32 with channels-last inputs, bf16 (``memory_format="auto"``: channels-last). One repetition times
every configuration back to back, so a slow spell of a shared machine hits all of them; the table
reports the median over repetitions. The method ranking per metric (by the mean over the scenes)
is compared between fp32 and bf16. ROAD's time also includes the noisy linear imputation (float32
conjugate gradients, the same in every configuration); its share is reported alone.

A thin command line over ``pytorch_cam``: the scenes and model are ``pytorch_cam.utils.scenes``, the
metrics ``pytorch_cam.metrics``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from pytorch_cam.methods import METHODS
from pytorch_cam.metrics import deletion_auc, masked_scores, road_score
from pytorch_cam.metrics.faithfulness import build_method
from pytorch_cam.metrics.road import DEFAULT_PERCENTILES, noisy_linear_impute, removal
from pytorch_cam.utils.scenes import generate_scenes, load_trained_cnn

WEIGHTS = Path(__file__).resolve().parent / "models" / "scenes_cnn.pt"
DEFAULT_METHODS = ("gradcam", "gradcam++", "scorecam", "eigencam", "layercam", "xgradcam")

#: name -> (keyword arguments of every metric call)
CONFIGS: Dict[str, dict] = {
    "fp32": {},
    "fp32 channels-last": {"memory_format": "channels_last"},
    "bf16": {"precision": "bf16"},
}


def metric_fns(steps: int) -> Dict[str, Callable[..., torch.Tensor]]:
    """name -> fn(model, images, maps, labels, **config) -> per-image value (B,), and its direction."""
    return {
        "ROAD (LeRF - MoRF)": lambda m, x, s, y, **k: road_score(m, x, s, y, **k)[0],
        "deletion AUC": lambda m, x, s, y, **k: deletion_auc(m, x, s, y, steps=steps, **k),
        "confidence (O - Y)": lambda m, x, s, y, **k: (lambda yo: yo[1] - yo[0])(masked_scores(m, x, s, y, **k)),
    }


HIGHER_IS_BETTER = {"ROAD (LeRF - MoRF)": True, "deletion AUC": False, "confidence (O - Y)": True}


def ranking(means: Dict[str, float], higher: bool) -> List[str]:
    return sorted(means, key=lambda k: -means[k] if higher else means[k])


def imputation_seconds(images: torch.Tensor, maps: Dict[str, torch.Tensor]) -> float:
    """Time of ROAD's imputations alone (both orders, every percentile, every method), batches of 128."""
    start = time.perf_counter()
    n_p = len(DEFAULT_PERCENTILES)
    for m in maps.values():
        for order in ("morf", "lerf"):
            removed = removal(m, order, DEFAULT_PERCENTILES)
            rows = torch.arange(images.shape[0] * n_p)
            for lo in range(0, rows.numel(), 128):
                r = rows[lo : lo + 128]
                noisy_linear_impute(images[r // n_p], removed(r // n_p, r % n_p))
    return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32, help="number of test scenes (default 32)")
    parser.add_argument("--reps", type=int, default=3, help="timing repetitions, median reported (default 3)")
    parser.add_argument("--steps", type=int, default=16, help="deletion steps (default 16)")
    parser.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS), help=f"subset of {sorted(METHODS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    device = torch.device(args.device)
    model = load_trained_cnn(WEIGHTS, device=device)
    images, labels, _ = generate_scenes(args.n, seed=0)
    images, labels = images.to(device), labels.to(device)
    maps = {}
    for name in args.methods:  # fp32 maps, as the faithfulness benchmark builds the methods (no progress bars)
        with build_method(name, model, [model.target_layer]) as cam:
            maps[name] = torch.from_numpy(cam(input_tensor=images, targets=labels.tolist())).to(device)

    fns = metric_fns(args.steps)
    seconds: Dict[str, Dict[str, List[float]]] = {metric: {c: [] for c in CONFIGS} for metric in fns}
    cpu_seconds: Dict[str, Dict[str, List[float]]] = {metric: {c: [] for c in CONFIGS} for metric in fns}
    means: Dict[str, Dict[str, Dict[str, float]]] = {metric: {c: {} for c in CONFIGS} for metric in fns}
    for metric, fn in fns.items():
        fn(model, images[:4], maps[args.methods[0]][:4], labels[:4])  # warm-up
        names = list(CONFIGS)
        for rep in range(args.reps):
            for config in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate the order
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start, cpu = time.perf_counter(), time.process_time()
                values = {name: fn(model, images, m, labels, **CONFIGS[config]) for name, m in maps.items()}
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[metric][config].append(time.perf_counter() - start)
                cpu_seconds[metric][config].append(time.process_time() - cpu)
                means[metric][config] = {name: float(v.mean()) for name, v in values.items()}
            print(f"{metric}: repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    impute = statistics.median(imputation_seconds(images, maps) for _ in range(max(1, args.reps // 2)))

    print(
        f"{args.n} scenes x {len(maps)} methods ({', '.join(maps)}), scenes CNN on {device}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; median of {args.reps} repetitions\n"
    )
    print("Wall-clock seconds (CPU seconds of the process in brackets: steadier on a shared machine).\n")
    print("| metric | " + " | ".join(f"{c} (s)" for c in CONFIGS) + " | bf16 speed-up | same ranking |")
    print("|---|" + "---|" * (len(CONFIGS) + 2))
    all_same = True
    for metric in fns:
        med = {c: statistics.median(seconds[metric][c]) for c in CONFIGS}
        cpu = {c: statistics.median(cpu_seconds[metric][c]) for c in CONFIGS}
        order32 = ranking(means[metric]["fp32"], HIGHER_IS_BETTER[metric])
        order16 = ranking(means[metric]["bf16"], HIGHER_IS_BETTER[metric])
        same = order32 == order16
        all_same &= same
        cells = " | ".join(f"{med[c]:.2f} ({cpu[c]:.2f})" for c in CONFIGS)
        speedup = f"{med['fp32'] / med['bf16']:.2f}x ({cpu['fp32'] / cpu['bf16']:.2f}x)"
        print(f"| {metric} | {cells} | {speedup} | {'yes' if same else 'NO'} |")
    print(f"| ROAD's imputation alone (float32, same in every configuration) | {impute:.2f} | | | | |")

    print("\nMean per method (fp32 / bf16), methods in fp32 rank order per metric:\n")
    print("| metric | " + " | ".join(f"#{i + 1}" for i in range(len(maps))) + " |")
    print("|---|" + "---|" * len(maps))
    for metric in fns:
        order = ranking(means[metric]["fp32"], HIGHER_IS_BETTER[metric])
        cells = [f"{k} {means[metric]['fp32'][k]:.4f} / {means[metric]['bf16'][k]:.4f}" for k in order]
        print(f"| {metric} | " + " | ".join(cells) + " |")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
