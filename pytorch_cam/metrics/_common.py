"""Shared plumbing of the metrics: input checks, target resolution and batched scoring.

Every forward a metric runs goes through ``forward_scores``: under ``torch.autocast`` for a reduced
``precision`` (the model's parameters are never cast), with the input in the resolved memory format,
and the scores returned as float32.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_cam.base_cam import model_device, resize_maps
from pytorch_cam.perturbation import score_rows as target_rows
from pytorch_cam.utils.model_state import eval_mode  # noqa: F401  (the metrics modules import it from here)
from pytorch_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget, class_indices
from pytorch_cam.utils.precision import (
    autocast,
    check_memory_format,
    check_precision,
    float32_outputs,
    to_memory_format,
)

MapsLike = Union[torch.Tensor, np.ndarray]
TargetsLike = Union[None, torch.Tensor, np.ndarray, Sequence]

#: "target": each image's target callable scores its output rows, as pytorch-grad-cam's metric classes do
SCORES = ("probability", "logit", "target")


def check_images(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(images) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"images must be a float tensor of shape (B, C, H, W), got {shape}")
    return images.detach().to(model_device(model))


def as_maps(maps: MapsLike, at_most_one: bool = True) -> torch.Tensor:
    """Maps as a float32 tensor, checked to be what every CAM returns: finite floats in [0, 1].

    ``at_most_one=False`` admits any non-negative scale (the localisation metrics are scale-free).
    """
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(np.ascontiguousarray(maps))
    if not torch.is_tensor(maps):
        raise TypeError(f"maps must be a tensor or numpy array of shape (B, H, W), got {type(maps).__name__}")
    if not maps.is_floating_point():
        hint = " (an 8-bit image of a map: divide it by 255)" if maps.dtype == torch.uint8 else ""
        raise TypeError(f"maps must be floats in [0, 1] like a CAM's output, got dtype {maps.dtype}{hint}")
    maps = maps.detach().float()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or Inf values; clean them (e.g. torch.nan_to_num) first")
    if maps.numel():
        lo, hi = float(maps.min()), float(maps.max())
        if lo < -1e-6 or (at_most_one and hi > 1 + 1e-6):
            want = "in [0, 1] like a CAM's output" if at_most_one else "non-negative maps"
            raise ValueError(
                f"the metrics need {want}, got values in [{lo:.3g}, {hi:.3g}]; scale each map first, "
                "e.g. with pytorch_cam.base_cam.min_max_scale"
            )
    return maps


def check_maps(maps: MapsLike, images: torch.Tensor) -> torch.Tensor:
    """Maps as a float tensor (B, H, W) on the images' device, resized to the images if needed."""
    maps = as_maps(maps)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"maps must have shape (B, H, W) with B={images.shape[0]} (one map per image), got {tuple(maps.shape)}"
        )
    return resize_maps(maps.to(images.device), images.shape[2:])


def check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


class Forward:
    """How a metric runs the model: ``precision`` and the input ``memory_format``, resolved once per call.

    ``memory_format="auto"`` keeps fp32 forwards contiguous (bit-exact with a plain ``model(x)``) and
    feeds reduced-precision forwards channels-last when the model has a 2-D convolution: oneDNN's
    bf16 convolutions and tensor-core kernels run NHWC natively (scenes CNN on a CPU, 256 images:
    bf16 592 ms contiguous vs 412 ms channels-last), and a reduced-precision result is already
    only close to fp32, so the layout's rounding costs nothing there.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", memory_format: str = "auto") -> None:
        self.precision = check_precision(precision)
        memory_format = check_memory_format(memory_format)
        if memory_format == "auto":
            convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
            memory_format = "channels_last" if self.precision != "fp32" and convolutional else "contiguous"
        self.memory_format = memory_format

    def __call__(self, model: nn.Module, x: torch.Tensor):
        """The model's outputs on ``x`` (no grad), reduced-precision floats cast back to float32."""
        with torch.no_grad(), autocast(x.device, self.precision):
            out = model(to_memory_format(x, self.memory_format))
        return float32_outputs(out) if self.precision != "fp32" else out


def forward_scores(
    model: nn.Module,
    x: torch.Tensor,
    classes: torch.Tensor,
    score: str,
    forward: Optional[Forward] = None,
    targets: Optional[Sequence] = None,
    image_index: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Score of row ``j`` of ``x`` (float32): its class ``classes[j]``'s softmax probability or
    raw logit, or (``score="target"``) ``targets[image_index[j]]`` applied to its output row."""
    out = (forward or Forward(model))(model, x)
    if score == "target":
        return score_targets(out, targets, image_index)
    if not torch.is_tensor(out) or out.ndim != 2:
        raise ValueError(
            "the metrics need a classifier that returns (B, classes) logits; "
            f"this model returned {tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}"
        )
    if score == "probability":
        out = F.softmax(out.float(), dim=1)
    return out.gather(1, classes[:, None])[:, 0].float()


def score_targets(outputs, targets: Sequence, image_index: torch.Tensor) -> torch.Tensor:
    """(R,) float32: ``targets[image_index[j]](outputs[j])`` for every output row ``j``, batched for the
    class-score targets (logit or softmax probability), one call per row for any other callable."""
    if (
        torch.is_tensor(outputs)
        and outputs.ndim == 2
        and targets
        and all(type(t) is ClassifierOutputSoftmaxTarget for t in targets)
    ):
        cats = class_indices(targets, outputs.shape[1], outputs.device)
        return F.softmax(outputs.float(), dim=1).gather(1, cats[image_index][:, None])[:, 0]
    return target_rows(outputs, targets, image_index).float()


def check_targets(targets, n: int) -> list:
    """Targets for ``score="target"``: one callable per image (``None``: each image's top class, later)."""
    if targets is None:
        return None
    if torch.is_tensor(targets) or isinstance(targets, np.ndarray):
        targets = [int(t) for t in targets.reshape(-1).tolist()]
    targets = list(targets)
    targets = [ClassifierOutputTarget(t) if isinstance(t, (int, np.integer)) else t for t in targets]
    bad = [t for t in targets if not callable(t)]
    if bad:
        raise TypeError(
            f"targets must be callables such as ClassifierOutputTarget(class_index), one per image; got {bad[0]!r}"
        )
    if len(targets) != n:
        raise ValueError(f"got {len(targets)} targets for {n} images; pass one target per image")
    return targets


def resolve_classes(
    model: nn.Module, images: torch.Tensor, targets: TargetsLike, forward: Optional[Forward] = None
) -> torch.Tensor:
    """Class index per image (B,) long: given ints / ClassifierOutputTarget, or the top class (as the
    model predicts it at the metric's precision)."""
    n = images.shape[0]
    if targets is None:
        with eval_mode(model):
            out = (forward or Forward(model))(model, images)
        return out.argmax(dim=1)
    if isinstance(targets, np.ndarray):
        targets = torch.from_numpy(targets)
    if torch.is_tensor(targets):
        classes = targets.reshape(-1).long()
    else:
        values = []
        for t in targets:
            if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
                values.append(int(t))
            elif hasattr(t, "category") and isinstance(t.category, (int, np.integer)):
                values.append(int(t.category))
            else:
                raise TypeError(
                    f"metric targets must be class indices or ClassifierOutputTarget, got {t!r}; "
                    "the confidence metrics score one class per image"
                )
        classes = torch.tensor(values, dtype=torch.long)
    if classes.numel() != n:
        raise ValueError(f"got {classes.numel()} targets for {n} images; pass one class per image or targets=None")
    with torch.no_grad(), eval_mode(model):
        out = model(images[:1])
    if not torch.is_tensor(out) or out.ndim != 2:
        return classes.to(images.device)  # forward_scores names the problem with the output
    n_classes = out.shape[1]
    if bool(((classes < -n_classes) | (classes >= n_classes)).any()):
        raise IndexError(
            f"target classes {classes.tolist()} include one outside the model output, which has {n_classes} "
            f"classes (valid: {-n_classes}..{n_classes - 1}, negative ones counted from the end as in Python)"
        )
    return (classes % n_classes).to(images.device)


def score_rows(
    model: nn.Module,
    make_rows,
    rows: int,
    classes: Optional[torch.Tensor],
    score: str,
    batch_size: int,
    forward: Optional[Forward] = None,
    targets: Optional[Sequence] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Score ``rows`` perturbed inputs built chunk by chunk: ``make_rows(start, stop)`` returns
    (inputs, image index per row). Returns (rows,) float32 scores, so memory stays bounded.
    ``classes`` (per image) for the class scores, ``targets`` (per image) for ``score="target"``."""
    out = []
    forward = forward or Forward(model)
    with torch.no_grad(), eval_mode(model):
        for start in range(0, rows, batch_size):
            x, image_index = make_rows(start, min(rows, start + batch_size))
            cls = None if classes is None else classes[image_index]
            out.append(forward_scores(model, x, cls, score, forward, targets, image_index))
    if out:
        return torch.cat(out)
    return torch.zeros(0, device=device if device is not None else classes.device)


def resolve_targets(model: nn.Module, images: torch.Tensor, targets, forward: Optional[Forward] = None) -> list:
    """One target callable per image for ``score="target"``; ``None``: the logit of each image's top class."""
    checked = check_targets(targets, images.shape[0])
    if checked is None:
        classes = resolve_classes(model, images, None, forward)
        checked = [ClassifierOutputTarget(int(c)) for c in classes.tolist()]
    return checked


def resolve_scoring(
    model: nn.Module, images: torch.Tensor, targets, score: str, forward: Optional[Forward] = None
) -> Tuple[Optional[torch.Tensor], Optional[list]]:
    """What a metric scores each image by: (class per image, None), or for ``score="target"``
    (None, one target callable per image)."""
    if score == "target":
        return None, resolve_targets(model, images, targets, forward)
    return resolve_classes(model, images, targets, forward), None


def check_percentile(percentile: Union[float, str]) -> Union[float, str]:
    """A percentile of the map's values at which to cut: a number in (0, 100) or ``"auto"`` (Otsu)."""
    if percentile == "auto":
        return percentile
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real):
        raise ValueError(f"percentile must be a number strictly between 0 and 100 or 'auto', got {percentile!r}")
    if not 0 < float(percentile) < 100:
        raise ValueError(f"percentile must be strictly between 0 and 100 (or 'auto'), got {percentile!r}")
    return percentile


def percentile_list(percentiles) -> list:
    """One percentile (a number or ``"auto"``) or several, as a non-empty checked list."""
    values = [percentiles] if isinstance(percentiles, (str, numbers.Real)) else list(percentiles)
    if not values:
        raise ValueError("percentiles is empty: pass at least one value strictly between 0 and 100")
    return [check_percentile(p) for p in values]


def pixel_ranks(maps: torch.Tensor, descending: bool = True, seed: int = 0) -> torch.Tensor:
    """(B, H*W) rank of every pixel when sorted by map value (0 = first).

    Ties (e.g. the flat inside of a binary mask) are broken in a seeded random order: raster
    order would remove whole rows from the top, which biases the curves and, for ROAD, leaves one
    huge hole for the imputation.
    """
    flat = maps.reshape(maps.shape[0], -1)
    g = torch.Generator(device=flat.device).manual_seed(seed)
    shuffle = torch.argsort(torch.rand(flat.shape, generator=g, device=flat.device), dim=1)
    order = torch.argsort(flat.gather(1, shuffle), dim=1, descending=descending, stable=True)
    order = shuffle.gather(1, order)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (kernel radius 3 sigma, capped by the image)."""
    if sigma <= 0:
        return images
    h, w = images.shape[-2:]
    radius = max(1, min(int(3 * sigma + 0.5), min(h, w) - 1))
    t = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(images.dtype)
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
