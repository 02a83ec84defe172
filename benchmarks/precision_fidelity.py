"""Fidelity of reduced precision: each method's bf16 / fp16 maps against its fp32 maps.

    python -m benchmarks.precision_fidelity                         # scenes CNN, scenes ViT, resnet50
    python -m benchmarks.precision_fidelity --models cnn --n 64 --methods gradcam scorecam

For every model and method the maps of the same images and targets are computed with
``precision="fp32"``, ``"bf16"`` and ``"fp16"`` (``torch.autocast`` for the forwards and, for
gradient methods, the backward; see ``pytorch_cam.utils.precision``) and compared image by image:

- **r**: the Pearson correlation of the reduced-precision map with the fp32 map (flattened, in
  float64), median and minimum over the images. Two constant maps count as r = 1, one constant map
  against a varying one as r = 0.
- **pointing game** (scenes only, which have exact object masks; 2 px tolerance as in the
  faithfulness benchmark): the share of images whose map peaks on the object, per precision.
- **ms / image** of each precision on this machine.
- **control**: the fp32 map of the same images plus Gaussian noise of ``--control-noise`` (1e-3)
  times the images' standard deviation — a change far below one 8-bit grey level — against the
  fp32 map, median and minimum r. It is the method's own sensitivity to a negligible change of its
  input: where reduced precision loses no more than this, the loss is the method's conditioning,
  not the precision's.

Models: the *trained* scenes CNN and ViT of ``benchmarks.scenes`` (explaining each scene's
ground-truth class; random weights would flatter or punish precision arbitrarily), and torchvision
``resnet50`` with *random* weights (seeded; the scenes upsampled to 224x224, explaining the fp32
top class), where Score-CAM runs with CSKIP-16 to stay affordable. The targets are fixed before
the comparison, so all precisions explain the same class.

Prints a markdown table per model.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
#: methods run by default: the issue's list, then cheap ones
DEFAULT_METHODS = [
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigencam",
    "eigengradcam",
    "fullgrad",
    "shapleycam",
    "smoothgradcampp",
    "scorecam",
    "sscam",
    "iscam",
    "ablationcam",
]
#: methods too slow on resnet50 at 224x224 on a CPU with their defaults (SS-CAM/IS-CAM score 8x Score-CAM)
SLOW_ON_LARGE = {"sscam", "iscam"}
#: (method, precision) pairs not run on a CPU: fp16 autocast has no fast CPU kernels (10-40x slower than
#: fp32), which makes the methods that run thousands of forwards take hours
SLOW_FP16_ON_CPU = {"sscam", "iscam"}


def per_image_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation (B,) of maps ``a`` and ``b`` (B, H, W), image by image, in float64.

    Two constant maps (e.g. both all zero) are identical: r = 1; a constant map against a varying
    one shares nothing with it: r = 0.
    """
    x = a.reshape(a.shape[0], -1).double()
    y = b.reshape(b.shape[0], -1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    nx, ny = x.norm(dim=1), y.norm(dim=1)
    r = (x * y).sum(1) / (nx * ny).clamp(min=1e-300)
    flat_x, flat_y = nx == 0, ny == 0
    r = torch.where(flat_x & flat_y, torch.ones_like(r), r)
    return torch.where(flat_x ^ flat_y, torch.zeros_like(r), r)


class Case:
    """One model to compare precisions on: the model, its layers, images, targets and (optional) masks."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        layers: List[nn.Module],
        images: torch.Tensor,
        targets: List[int],
        masks: Optional[torch.Tensor],
        method_kwargs: Dict[str, dict],
        trained: bool,
    ) -> None:
        self.name, self.model, self.layers, self.images = name, model, layers, images
        self.targets, self.masks, self.method_kwargs, self.trained = targets, masks, method_kwargs, trained


def scenes_case(kind: str, n: int, seed: int) -> Case:
    from benchmarks.faithfulness import load_cnn, load_vit, method_kwargs
    from pytorch_cam.utils.scenes import generate_scenes

    model, layers, _ = (load_cnn if kind == "cnn" else load_vit)()
    images, labels, masks = generate_scenes(n, seed)
    kwargs = method_kwargs(model)
    name = "scenes CNN (trained)" if kind == "cnn" else "scenes ViT (trained)"
    return Case(name, model, layers, images, labels.tolist(), masks, kwargs, trained=True)


def resnet50_case(n: int, seed: int) -> Case:
    import torchvision

    from pytorch_cam.metrics.faithfulness import DEFAULT_METHOD_KWARGS
    from pytorch_cam.utils.scenes import generate_scenes

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    scenes, _, _ = generate_scenes(n, seed)
    images = F.interpolate(scenes, size=(224, 224), mode="bilinear", align_corners=False)
    images = (images - 0.45) / 0.25
    with torch.inference_mode():
        targets = model(images).argmax(1).tolist()
    kwargs = {**DEFAULT_METHOD_KWARGS, "scorecam": {"cskip": 16}}
    return Case("resnet50 (random weights, seeded)", model, [model.layer4[-1]], images, targets, None, kwargs, False)


def compute_maps(
    case: Case, method: str, precision: str, batch_size: int, images: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, float]:
    """The maps (N, H, W) of ``method`` at ``precision`` for the case's images (or ``images``), and the
    seconds per image."""
    from pytorch_cam.metrics.faithfulness import build_method

    images = case.images if images is None else images
    cam = build_method(method, case.model, case.layers, None, case.method_kwargs, precision=precision)
    out = []
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        maps = cam(x, targets=case.targets[i : i + batch_size])
        if not (isinstance(maps, np.ndarray) and maps.dtype == np.float32):
            raise TypeError(f"{method} at {precision} returned {type(maps).__name__} {getattr(maps, 'dtype', '')}")
        out.append(torch.from_numpy(maps))
    seconds = (time.perf_counter() - start) / len(images)
    return torch.cat(out), seconds


def kernel_for(method: str) -> contextlib.AbstractContextManager:
    """ShapleyCAM's Hessian-vector product needs attention's second derivative: the math kernel has it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH) if method == "shapleycam" else contextlib.nullcontext()


def evaluate(
    case: Case,
    methods: Sequence[str],
    precisions: Sequence[str],
    batch_size: int,
    log: Callable[[str], None],
    control_noise: float = 1e-3,
) -> List[dict]:
    """One row per method: correlations with fp32, pointing game and time per precision (or an error)."""
    from pytorch_cam.metrics.pointing import pointing_game

    rows = []
    on_cpu = next(case.model.parameters()).device.type == "cpu"
    noisy = None
    if control_noise > 0:
        g = torch.Generator().manual_seed(12345)
        noise = torch.randn(case.images.shape, generator=g).to(case.images.device)
        noisy = case.images + control_noise * float(case.images.std()) * noise
    for method in methods:
        row: dict = {"method": method}
        maps: Dict[str, torch.Tensor] = {}
        for q in ("fp32", *[q for q in precisions if q != "fp32"]):
            if q == "fp16" and on_cpu and method in SLOW_FP16_ON_CPU:
                row["skip_fp16"] = True
                continue
            try:
                with kernel_for(method):
                    maps[q], row[f"s_{q}"] = compute_maps(case, method, q, batch_size)
            except Exception as exc:  # reported in the table: a precision a method cannot run at is a finding
                row[f"error_{q}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
                log(f"  {case.name} {method} {q}: {row[f'error_{q}']}")
                if q == "fp32":
                    break
                continue
            if q == "fp32" and noisy is not None:
                with kernel_for(method):
                    control, _ = compute_maps(case, method, "fp32", batch_size, noisy)
                r = per_image_pearson(control, maps["fp32"])
                row["r_med_control"], row["r_min_control"] = float(r.median()), float(r.min())
            if q != "fp32":
                r = per_image_pearson(maps[q], maps["fp32"])
                row[f"r_med_{q}"], row[f"r_min_{q}"] = float(r.median()), float(r.min())
                row[f"maxdiff_{q}"] = float((maps[q] - maps["fp32"]).abs().max())
            if case.masks is not None:
                row[f"pg_{q}"] = float(pointing_game(maps[q], case.masks, tolerance=2).mean())
            mine = [k for k in row if q in k or (q == "fp32" and "control" in k)]
            log(f"  {case.name} {method} {q}: " + ", ".join(f"{k}={row[k]}" for k in mine))
        rows.append(row)
    return rows


def _num(v: Optional[float], spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_rows(case: Case, rows: List[dict], precisions: Sequence[str]) -> str:
    reduced = [q for q in precisions if q != "fp32"]
    control = any("r_med_control" in row for row in rows)
    cols = [f"{q} r median / min" for q in reduced] + [f"{q} max abs diff" for q in reduced]
    cols += ["control r median / min"] if control else []
    if case.masks is not None:
        cols += [f"PG {q}" for q in ("fp32", *reduced)]
    cols += [f"ms/img {q}" for q in ("fp32", *reduced)]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (1 + len(cols)) + "|"]
    for row in rows:
        cells = []
        for q in reduced:
            if f"error_{q}" in row or "error_fp32" in row:
                cells.append("error: " + row.get(f"error_{q}", row.get("error_fp32", ""))[:60].replace("|", "/") + "…")
            elif row.get(f"skip_{q}"):
                cells.append("not run (fp16 on a CPU: too slow)")
            else:
                cells.append(f"{_num(row.get(f'r_med_{q}'), '.4f')} / {_num(row.get(f'r_min_{q}'), '.4f')}")
        cells += [_num(row.get(f"maxdiff_{q}"), ".3f") for q in reduced]
        if control:
            cells.append(f"{_num(row.get('r_med_control'), '.4f')} / {_num(row.get('r_min_control'), '.4f')}")
        if case.masks is not None:
            cells += [_num(row.get(f"pg_{q}"), ".3f") for q in ("fp32", *reduced)]
        cells += [_num(row.get(f"s_{q}", math.nan) * 1000, ".1f") for q in ("fp32", *reduced)]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CASES: Dict[str, Callable[[int, int], Case]] = {
    "cnn": lambda n, seed: scenes_case("cnn", n, seed),
    "vit": lambda n, seed: scenes_case("vit", n, seed),
    "resnet50": resnet50_case,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pytorch_cam.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=DEFAULT_METHODS)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--n", type=int, default=128, help="scenes per model (default 128)")
    parser.add_argument("--n-resnet50", type=int, default=8, help="images for resnet50 (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (the models were trained on seeds >= 1e6)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per CAM call")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--control-noise",
        type=float,
        default=1e-3,
        help="the control column's input noise, relative to the images' std (0: no control column)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the models and images are moved there)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = [q for q in PRECISIONS if q in args.precisions or q == "fp32"]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads\n")
    failed = False
    for name in args.models:
        n = args.n_resnet50 if name == "resnet50" else args.n
        case = CASES[name](n, args.seed)
        case.model.to(args.device)
        case.images = case.images.to(args.device)
        methods = [m for m in args.methods if not (name == "resnet50" and m in SLOW_ON_LARGE)]
        rows = evaluate(case, methods, precisions, args.batch_size, log, args.control_noise)
        failed |= any(k.startswith("error") for row in rows for k in row)
        what = "ground-truth class" if case.trained else "fp32 top class"
        print(f"**{case.name}**: {n} images, explaining the {what}\n")
        print(format_rows(case, rows, precisions))
        print(flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
