"""Which map to trust: CAM methods scored against ground-truth masks.

``evaluate_faithfulness`` runs CAM methods (by their command-line names, see
``pytorch_cam.methods``) on images whose object masks are known, each explaining the image's
label, and scores every map with the metrics of this package: pointing game and energy pointing
game against the masks; with the model, deletion / insertion AUC, Average Drop, Increase in
Confidence and ROAD. Two reference rows bracket the table: the ground-truth mask itself (an oracle
map) and uniform random maps. ``format_table`` prints the rows as a markdown table and
``save_grid`` draws example maps per method (it needs matplotlib, which pytorch_cam does not
depend on).

    from pytorch_cam.metrics.faithfulness import evaluate_faithfulness, format_table
    from pytorch_cam.utils.scenes import generate_scenes, load_trained_cnn

    model = load_trained_cnn("benchmarks/models/scenes_cnn.pt")
    images, labels, masks = generate_scenes(100, seed=0)
    rows, examples = evaluate_faithfulness(
        model, images, labels, masks, ["gradcam", "scorecam"], target_layers=[model.target_layer]
    )
    print(format_table(rows))

A method that fails (e.g. CAM on a model without a global-average-pool + linear head) gets a row
``{"method": name, "error": "..."}`` instead of raising, so one method cannot sink a long run.
"""

from __future__ import annotations

import inspect
import io
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from pytorch_cam.metrics.confidence import masked_scores
from pytorch_cam.metrics.deletion import deletion_auc, insertion_auc
from pytorch_cam.metrics.pointing import energy_pointing_game, pointing_game
from pytorch_cam.metrics.road import road_score
from pytorch_cam.utils.precision import check_precision

ORACLE = "(oracle: ground-truth mask)"
RANDOM = "(baseline: uniform random)"

#: extra constructor arguments per method, passed only if its __init__ accepts them. Keeps the
#: expensive sampling methods to a budget comparable with Score-CAM on a 64-channel layer.
DEFAULT_METHOD_KWARGS: Dict[str, dict] = {
    "sscam": {"num_samples": 8},
    "iscam": {"num_samples": 8},
}

#: the columns of the table: key, header (with the better direction), format
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


class FaithfulnessResult(NamedTuple):
    """``rows``: one dict per map source (the two references, then each method): ``"method"``, the
    mean of every ``COLUMNS`` key over the images (``"ms"`` is nan for the references), or
    ``"method"`` and ``"error"`` for a method that failed. ``examples``: source name -> the maps
    (numpy, (k, H, W)) of the first ``num_examples`` images."""

    rows: List[dict]
    examples: Dict[str, np.ndarray]


def build_method(
    name: str,
    model: nn.Module,
    target_layers: Optional[List[nn.Module]],
    reshape_transform: Optional[Callable] = None,
    method_kwargs: Optional[Dict[str, dict]] = None,
    precision: str = "fp32",
):
    """Construct method ``name`` (its command-line name) with the keyword arguments its __init__
    accepts: the reshape transform, ``seed=0``, the model's ``fc`` as CAM's ``fc_layer``, no
    progress bar and chunks of 64 for the batched methods, ``precision`` (when not fp32), and
    ``method_kwargs[name]`` (whose ``target_layers``, if any, replaces ``target_layers`` for this
    method)."""
    from pytorch_cam.methods import BATCHED, METHODS  # lazily: METHODS needs the finished registry

    cls = METHODS[name]
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    wanted = {"reshape_transform": reshape_transform, "seed": 0, "fc_layer": getattr(model, "fc", None)}
    if name in BATCHED:
        wanted.update(batch_size=64, progress=False)
    if check_precision(precision) != "fp32":
        wanted["precision"] = precision
    extra = dict((DEFAULT_METHOD_KWARGS if method_kwargs is None else method_kwargs).get(name, {}))
    target_layers = extra.pop("target_layers", target_layers)  # e.g. two layers for the layer-combining methods
    wanted.update(extra)
    passes_on = ("batch_size", "progress", "precision")  # to BaseCAM through a subclass's **kwargs
    kwargs = {k: v for k, v in wanted.items() if k in params or (takes_any and k in passes_on)}
    return cls(model=model, target_layers=target_layers, **kwargs)


def score_maps(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    maps: torch.Tensor,
    *,
    steps: int = 16,
    percentiles: Sequence[float] = (20, 50, 80),
    tolerance: int = 2,
    score_batch_size: int = 256,
    precision: str = "fp32",
) -> Dict[str, torch.Tensor]:
    """Every metric of ``COLUMNS`` (but ``ms``), per image (B,), for one batch of maps (B, H, W);
    the model's forwards at ``precision``."""
    fwd = {"precision": precision, "batch_size": score_batch_size}
    y, o = masked_scores(model, images, maps, labels, precision=precision)
    road, morf, lerf = road_score(model, images, maps, labels, percentiles=percentiles, **fwd)
    return {
        "pointing": pointing_game(maps, masks, tolerance=tolerance),
        "energy": energy_pointing_game(maps, masks),
        "deletion": deletion_auc(model, images, maps, labels, steps=steps, **fwd),
        "insertion": insertion_auc(model, images, maps, labels, steps=steps, **fwd),
        "avg_drop": 100 * (y - o).clamp(min=0) / y,
        "increase": 100 * (o > y).float(),
        "road": road,
        "road_morf": morf,
        "road_lerf": lerf,
    }


def evaluate_faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    methods: Optional[Sequence[str]] = None,
    *,
    target_layers: Optional[List[nn.Module]] = None,
    reshape_transform: Optional[Callable] = None,
    batch_size: int = 50,
    steps: int = 16,
    percentiles: Sequence[float] = (20, 50, 80),
    tolerance: int = 2,
    score_batch_size: int = 256,
    num_examples: int = 6,
    examples_only: bool = False,
    seed: int = 0,
    method_kwargs: Optional[Dict[str, dict]] = None,
    log: Optional[Callable[[str], None]] = None,
    precision: str = "fp32",
) -> FaithfulnessResult:
    """Score CAM methods against ground-truth masks; see the module docstring.

    Args:
        model: the classifier to explain, in eval mode.
        images: (N, C, H, W) inputs of ``model``; labels: (N,) the class each map explains;
            masks: (N, H, W) bool, True on the object's pixels.
        methods: command-line names (``pytorch_cam.methods.METHODS``); default: every method.
        target_layers, reshape_transform: as for every method (None: inferred).
        batch_size: images per CAM call. steps: deletion/insertion steps. percentiles: ROAD's.
        tolerance: the pointing game's, in pixels. score_batch_size: perturbed images per forward.
        num_examples: how many maps per source to return in ``examples``.
        examples_only: compute only the first batch's maps, exactly as the full run does, and no
            metrics (``rows`` then only holds the methods that failed).
        seed: seeds the uniform random baseline maps.
        method_kwargs: extra constructor arguments per method name (default
            ``DEFAULT_METHOD_KWARGS``), passed where the method accepts them.
        log: called with each finished row as a markdown table line (partial results).
        precision: ``"fp32"`` (exact), ``"bf16"`` or ``"fp16"``: the forwards of the CAM methods
            that take a ``precision`` and of every metric (see ``pytorch_cam.utils.precision``);
            ``method_kwargs`` can still set a method's own.
    """
    precision = check_precision(precision)
    from pytorch_cam.methods import METHODS

    names = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    n = len(images)
    if n == 0:
        raise ValueError("images is empty: pass at least one image to evaluate")
    if len(labels) != n or len(masks) != n:
        raise ValueError(
            f"got {n} images, {len(labels)} labels and {len(masks)} masks; pass one label and one mask per image"
        )
    gen = torch.Generator().manual_seed(seed)
    random_maps = torch.rand(masks.shape, generator=gen)
    sources: List[Tuple[str, Callable[[int, int], torch.Tensor]]] = [
        (ORACLE, lambda lo, hi: masks[lo:hi].float()),
        (RANDOM, lambda lo, hi: random_maps[lo:hi]),
    ]
    errors = []
    for name in names:
        try:
            cam = build_method(name, model, target_layers, reshape_transform, method_kwargs, precision)
        except Exception as exc:  # reported in the rows, never hidden
            errors.append((name, exc))
            continue

        def compute(lo: int, hi: int, cam=cam) -> torch.Tensor:
            return torch.from_numpy(cam(input_tensor=images[lo:hi], targets=labels[lo:hi].tolist()))

        sources.append((name, compute))

    rows, examples = [], {}
    for name, compute in sources:
        sums: Dict[str, float] = {}
        seconds = 0.0
        for lo in range(0, min(n, batch_size) if examples_only else n, batch_size):
            hi = min(n, lo + batch_size)
            start = time.perf_counter()
            try:
                maps = compute(lo, hi)
            except Exception as exc:
                errors.append((name, exc))
                break
            seconds += time.perf_counter() - start
            if lo == 0:
                examples[name] = maps[:num_examples].numpy()
            if examples_only:
                continue
            scores = score_maps(
                model,
                images[lo:hi],
                labels[lo:hi],
                masks[lo:hi],
                maps,
                steps=steps,
                percentiles=percentiles,
                tolerance=tolerance,
                score_batch_size=score_batch_size,
                precision=precision,
            )
            for key, values in scores.items():
                sums[key] = sums.get(key, 0.0) + float(values.sum())
        else:
            if examples_only:
                continue
            row = {"method": name, **{k: v / n for k, v in sums.items()}}
            row["ms"] = 1000 * seconds / n if not name.startswith("(") else float("nan")
            rows.append(row)
            if log is not None:
                log(format_table([row]).splitlines()[-1])
    for name, exc in errors:
        rows.append({"method": name, "error": f"{type(exc).__name__}: {exc}"})
    return FaithfulnessResult(rows, examples)


def format_table(rows: List[dict]) -> str:
    """The rows of ``evaluate_faithfulness`` as a markdown table (a failed method: its error)."""
    header = "| Method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | failed: {row['error']} |" + " |" * (len(COLUMNS) - 1))
            continue
        cells = ["–" if np.isnan(row[k]) else fmt.format(row[k]) for k, _, fmt in COLUMNS]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_grid(
    path: Union[str, Path],
    examples: Dict[str, np.ndarray],
    images: torch.Tensor,
    masks: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    class_names: Optional[Sequence[str]] = None,
) -> None:
    """Draw a PNG grid: per example image (rows), the image, its mask and every source's map.

    ``images`` (k, 3, H, W) in [0, 1] and ``masks`` (k, H, W) are the first k images of the
    evaluation, ``examples`` the maps of ``evaluate_faithfulness``. Row titles are the labels'
    ``class_names`` (or the class indices). Needs matplotlib (and Pillow, which it depends on).
    """
    try:
        from matplotlib.figure import Figure
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "save_grid draws with matplotlib, which pytorch_cam does not depend on: pip install matplotlib"
        ) from exc

    names = list(examples)
    rows, cols = len(images), len(names) + 2
    # A bare Figure renders with Agg and leaves the user's pyplot backend and figures alone.
    fig = Figure(figsize=(1.3 * cols, 1.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        rgb = images[r].permute(1, 2, 0).numpy()
        axes[r, 0].imshow(rgb, interpolation="nearest")
        if labels is not None:
            label = int(labels[r])
            axes[r, 0].set_title(class_names[label] if class_names is not None else str(label), fontsize=7)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110)
    Image.open(buf).convert("RGB").save(path, optimize=True)  # matplotlib's alpha channel is all opaque
