"""Faithfulness benchmark with ground truth: every CAM method on synthetic scenes.

    python -m benchmarks.faithfulness                  # all methods, 500 test scenes
    python -m benchmarks.faithfulness --n 100 --methods gradcam scorecam

Each method of ``pytorch_cam.methods.METHODS`` explains the ground-truth class of every test
scene (seed 0 by default; the CNN was trained on seeds >= ``TRAIN_SEED_BASE``) at
``model.target_layer``. The maps are scored against the exact object masks (pointing game,
energy pointing game) and with the model (deletion / insertion AUC, Average Drop, Increase in
Confidence, ROAD), see ``pytorch_cam.metrics``. Two reference rows bracket the table: the
ground-truth mask itself (an oracle map) and uniform random maps. The script prints a markdown
table and writes a PNG grid of example maps per method.

``--model vit`` runs the same benchmark on the tiny ViT of ``benchmarks.scenes`` (its last
block's first norm, the token grid inferred by ``pytorch_cam``). A method that does not apply to
a model (CAM needs a global-average-pool + linear head) is reported as such in the table.

This script is a thin command line: the scenes and models are ``pytorch_cam.utils.scenes``, the
evaluation is ``pytorch_cam.metrics.faithfulness.evaluate_faithfulness``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from benchmarks.scenes import load_trained_cnn, load_trained_vit
from pytorch_cam.methods import METHODS
from pytorch_cam.metrics.faithfulness import DEFAULT_METHOD_KWARGS, evaluate_faithfulness, format_table, save_grid
from pytorch_cam.utils.scenes import CLASSES, generate_scenes

DEFAULT_GRID = Path(__file__).resolve().parent / "_cache" / "faithfulness_grid.png"


def load_cnn() -> Tuple[nn.Module, List[nn.Module], Optional[Callable]]:
    model = load_trained_cnn()
    return model, [model.target_layer], None


def load_vit() -> Tuple[nn.Module, List[nn.Module], Optional[Callable]]:
    # reshape_transform=None on purpose: the token grid (8x8 + class token) is inferred
    model = load_trained_vit()
    return model, [model.target_layer], None


def two_layers(model: nn.Module) -> List[nn.Module]:
    """For the methods that combine layers (RefineCAM, multi-layer AblationCAM): the target layer and the
    one before it at the same resolution and width (CNN: the previous block's ReLU; ViT: the previous
    block's ln_1)."""
    if hasattr(model, "vit"):
        return [model.vit.encoder.layers[-2].ln_1, model.target_layer]
    return [model.features[-4], model.target_layer]


def method_kwargs(model: nn.Module) -> Dict[str, dict]:
    layers = two_layers(model)
    return {
        **DEFAULT_METHOD_KWARGS,
        "refinecam": {"target_layers": layers},
        "ablationcam_multilayer": {"target_layers": layers},
    }


#: model name -> loader returning (model, target_layers, reshape_transform)
MODELS: Dict[str, Callable[[], Tuple[nn.Module, List[nn.Module], Optional[Callable]]]] = {
    "cnn": load_cnn,
    "vit": load_vit,
}


@dataclass
class Config:
    n: int = 500
    seed: int = 0
    batch_size: int = 50
    steps: int = 16
    percentiles: Sequence[float] = (20, 50, 80)
    tolerance: int = 2
    score_batch_size: int = 256
    methods: Optional[Sequence[str]] = None
    model: str = "cnn"
    grid: Optional[Path] = DEFAULT_GRID
    grid_examples: int = 6
    grid_only: bool = False
    extra: dict = field(default_factory=dict)


def print_partial(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(cfg: Config) -> Tuple[List[dict], Dict[str, np.ndarray], Tuple[torch.Tensor, ...]]:
    """Evaluate every method; returns table rows, example maps per method and the example scenes."""
    model, target_layers, reshape_transform = MODELS[cfg.model]()
    images, labels, masks = generate_scenes(cfg.n, cfg.seed)
    rows, examples = evaluate_faithfulness(
        model,
        images,
        labels,
        masks,
        cfg.methods,
        target_layers=target_layers,
        reshape_transform=reshape_transform,
        batch_size=cfg.batch_size,
        steps=cfg.steps,
        percentiles=cfg.percentiles,
        tolerance=cfg.tolerance,
        score_batch_size=cfg.score_batch_size,
        num_examples=cfg.grid_examples,
        examples_only=cfg.grid_only,  # --grid-only: the first batch, exactly as the full run computes it
        seed=cfg.seed,
        method_kwargs=method_kwargs(model),
        log=print_partial,  # partial results as each row finishes
    )
    k = cfg.grid_examples
    return rows, examples, (images[:k], labels[:k], masks[:k])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="number of test scenes (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (training used seeds >= 1e6)")
    parser.add_argument("--methods", nargs="*", help=f"subset of {sorted(METHODS)}")
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--batch-size", type=int, default=50, help="images per CAM call")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    parser.add_argument("--percentiles", type=float, nargs="+", default=[20, 50, 80], help="ROAD percentiles")
    parser.add_argument("--tolerance", type=int, default=2, help="pointing-game tolerance in pixels (default 2)")
    parser.add_argument(
        "--grid", type=Path, default=None, help="PNG grid of example maps (default benchmarks/_cache/...)"
    )
    parser.add_argument(
        "--grid-only", action="store_true", help="only draw the grid (the first batch's maps), no metrics"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--sdpa-math",
        action="store_true",
        help="attention through PyTorch's plain (math) kernel, which has second derivatives (ShapleyCAM on the ViT)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config(
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
        steps=args.steps,
        percentiles=tuple(args.percentiles),
        tolerance=args.tolerance,
        methods=args.methods,
        model=args.model,
        grid=args.grid or DEFAULT_GRID.with_name(f"faithfulness_grid_{args.model}.png"),
        grid_only=args.grid_only,
    )
    if args.sdpa_math:  # process-wide, which is fine in this script
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            rows, examples, scenes = run(cfg)
    else:
        rows, examples, scenes = run(cfg)
    if not cfg.grid_only:
        print(
            f"{cfg.n} scenes (seed {cfg.seed}), model {cfg.model}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads\n"
        )
    if rows:  # with --grid-only, only the methods that failed
        print(format_table(rows))
    if cfg.grid is not None:
        images, labels, masks = scenes
        save_grid(cfg.grid, examples, images, masks, labels, class_names=CLASSES)
        print(f"\nexample maps: {cfg.grid}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
