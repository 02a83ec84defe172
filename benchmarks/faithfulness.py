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
"""

from __future__ import annotations

import argparse
import inspect
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from benchmarks.scenes import CLASSES, generate_scenes, load_trained_cnn, load_trained_vit
from pytorch_cam.methods import BATCHED, METHODS
from pytorch_cam.metrics import (
    deletion_auc,
    energy_pointing_game,
    insertion_auc,
    masked_scores,
    pointing_game,
    road_score,
)

DEFAULT_GRID = Path(__file__).resolve().parent / "_cache" / "faithfulness_grid.png"

#: extra constructor arguments per method, passed only if its __init__ accepts them. Keeps the
#: expensive sampling methods to a budget comparable with Score-CAM on this 64-channel layer.
METHOD_KWARGS: Dict[str, dict] = {
    "sscam": {"num_samples": 8},
    "iscam": {"num_samples": 8},
}

#: the columns of the table: key, header, format, which direction is better
COLUMNS: List[Tuple[str, str, str]] = [
    ("pointing", "Pointing game ↑", "{:.3f}"),
    ("energy", "Energy PG ↑", "{:.3f}"),
    ("deletion", "Deletion AUC ↓", "{:.3f}"),
    ("insertion", "Insertion AUC ↑", "{:.3f}"),
    ("avg_drop", "Avg Drop % ↓", "{:.1f}"),
    ("increase", "Incr. Conf. % ↑", "{:.1f}"),
    ("road", "ROAD LeRF−MoRF ↑", "{:.3f}"),
    ("road_morf", "ROAD MoRF ↓", "{:.3f}"),
    ("road_lerf", "ROAD LeRF ↑", "{:.3f}"),
    ("ms", "ms / image", "{:.2f}"),
]


def load_cnn() -> Tuple[nn.Module, List[nn.Module], Optional[Callable]]:
    model = load_trained_cnn()
    return model, [model.target_layer], None


def load_vit() -> Tuple[nn.Module, List[nn.Module], Optional[Callable]]:
    # reshape_transform=None on purpose: the token grid (8x8 + class token) is inferred
    model = load_trained_vit()
    return model, [model.target_layer], None


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


def build_method(name: str, model: nn.Module, target_layers: List[nn.Module], reshape_transform, cfg: Config):
    """Construct method ``name`` with the keyword arguments its __init__ accepts."""
    cls = METHODS[name]
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    wanted = {"reshape_transform": reshape_transform, "seed": 0, "fc_layer": getattr(model, "fc", None)}
    if name in BATCHED:
        wanted.update(batch_size=64, progress=False)
    wanted.update(METHOD_KWARGS.get(name, {}))
    kwargs = {k: v for k, v in wanted.items() if k in params or (takes_any and k in ("batch_size", "progress"))}
    return cls(model=model, target_layers=target_layers, **kwargs)


def score_maps(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    maps: torch.Tensor,
    cfg: Config,
) -> Dict[str, torch.Tensor]:
    """Every metric, per image, for one batch of maps (B, H, W)."""
    y, o = masked_scores(model, images, maps, labels)
    road, morf, lerf = road_score(
        model, images, maps, labels, percentiles=cfg.percentiles, batch_size=cfg.score_batch_size
    )
    return {
        "pointing": pointing_game(maps, masks, tolerance=cfg.tolerance),
        "energy": energy_pointing_game(maps, masks),
        "deletion": deletion_auc(model, images, maps, labels, steps=cfg.steps, batch_size=cfg.score_batch_size),
        "insertion": insertion_auc(model, images, maps, labels, steps=cfg.steps, batch_size=cfg.score_batch_size),
        "avg_drop": 100 * (y - o).clamp(min=0) / y,
        "increase": 100 * (o > y).float(),
        "road": road,
        "road_morf": morf,
        "road_lerf": lerf,
    }


def run(cfg: Config) -> Tuple[List[dict], Dict[str, np.ndarray], Tuple[torch.Tensor, ...]]:
    """Evaluate every method; returns table rows, example maps per method and the example scenes."""
    model, target_layers, reshape_transform = MODELS[cfg.model]()
    images, labels, masks = generate_scenes(cfg.n, cfg.seed)
    names = list(METHODS) if cfg.methods is None else list(cfg.methods)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    gen = torch.Generator().manual_seed(cfg.seed)
    random_maps = torch.rand(masks.shape, generator=gen)
    sources: List[Tuple[str, Callable[[int, int], torch.Tensor]]] = [
        ("(oracle: ground-truth mask)", lambda lo, hi: masks[lo:hi].float()),
        ("(baseline: uniform random)", lambda lo, hi: random_maps[lo:hi]),
    ]
    errors = []
    for name in names:
        try:
            cam = build_method(name, model, target_layers, reshape_transform, cfg)
        except Exception as exc:  # reported in the table and the exit status, never hidden
            errors.append((name, exc))
            continue

        def compute(lo: int, hi: int, cam=cam) -> torch.Tensor:
            return torch.from_numpy(cam(input_tensor=images[lo:hi], targets=labels[lo:hi].tolist()))

        sources.append((name, compute))

    rows, examples = [], {}
    for name, compute in sources:
        sums: Dict[str, float] = {}
        seconds = 0.0
        # --grid-only: the first batch, exactly as the full run computes it, and no metrics
        for lo in range(0, min(cfg.n, cfg.batch_size) if cfg.grid_only else cfg.n, cfg.batch_size):
            hi = min(cfg.n, lo + cfg.batch_size)
            start = time.perf_counter()
            try:
                maps = compute(lo, hi)
            except Exception as exc:
                errors.append((name, exc))
                break
            seconds += time.perf_counter() - start
            if lo == 0:
                examples[name] = maps[: cfg.grid_examples].numpy()
            if cfg.grid_only:
                continue
            for key, values in score_maps(model, images[lo:hi], labels[lo:hi], masks[lo:hi], maps, cfg).items():
                sums[key] = sums.get(key, 0.0) + float(values.sum())
        else:
            if cfg.grid_only:
                continue
            row = {"method": name, **{k: v / cfg.n for k, v in sums.items()}}
            row["ms"] = 1000 * seconds / cfg.n if not name.startswith("(") else float("nan")
            rows.append(row)
            print(format_table([row]).splitlines()[-1], file=sys.stderr, flush=True)  # partial results
    for name, exc in errors:
        rows.append({"method": name, "error": f"{type(exc).__name__}: {exc}"})
    return rows, examples, (images[: cfg.grid_examples], labels[: cfg.grid_examples], masks[: cfg.grid_examples])


def format_table(rows: List[dict]) -> str:
    header = "| Method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | failed: {row['error']} |" + " |" * (len(COLUMNS) - 1))
            continue
        cells = ["–" if np.isnan(row[k]) else fmt.format(row[k]) for k, _, fmt in COLUMNS]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_grid(path: Path, examples: Dict[str, np.ndarray], scenes: Tuple[torch.Tensor, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, labels, masks = scenes
    names = list(examples)
    rows, cols = len(images), len(names) + 2
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows), squeeze=False)
    for r in range(rows):
        rgb = images[r].permute(1, 2, 0).numpy()
        axes[r, 0].imshow(rgb, interpolation="nearest")
        axes[r, 0].set_title(CLASSES[int(labels[r])], fontsize=7)
        axes[r, 1].imshow(masks[r].numpy(), cmap="gray")
        axes[r, 1].set_title("mask", fontsize=7)
        for c, name in enumerate(names, start=2):
            axes[r, c].imshow(rgb, interpolation="nearest")
            axes[r, c].imshow(examples[name][r], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                axes[r, c].set_title(name.strip("()").split(":")[-1].strip(), fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110)
    plt.close(fig)
    from PIL import Image

    Image.open(buf).convert("RGB").save(path, optimize=True)  # matplotlib's alpha channel is all opaque


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
    rows, examples, scenes = run(cfg)
    if not cfg.grid_only:
        print(
            f"{cfg.n} scenes (seed {cfg.seed}), model {cfg.model}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads\n"
        )
    if rows:  # with --grid-only, only the methods that failed
        print(format_table(rows))
    if cfg.grid is not None:
        save_grid(cfg.grid, examples, scenes)
        print(f"\nexample maps: {cfg.grid}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
