"""The shared CAM pipeline.

``BaseCAM`` owns everything the methods have in common: capturing target-layer activations (and
their gradients), targets, ``reshape_transform``, test-time augmentation, eigen smoothing,
multi-layer aggregation, upsampling and scaling. A method only says how to weight the
activation channels (``get_cam_weights``) or, rarely, how to combine weights and activations
(``weighted_activations``).

Everything stays on the model's device as torch tensors until the final map, which is returned
as a numpy array of shape (B, H, W) (or (B, D, H, W) for volumes) with values in [0, 1].
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_cam.registry import Registered
from pytorch_cam.utils.find_layers import (
    find_default_target_layers,
    find_transformer_target_layers,
    guess_channels_last,
    known_num_prefix_tokens,
)
from pytorch_cam.utils.model_state import PerThreadResults, eager_model, eval_mode
from pytorch_cam.utils.model_targets import ClassifierOutputTarget, class_indices
from pytorch_cam.utils.precision import autocast, check_precision, float32_outputs, to_memory_format
from pytorch_cam.utils.reshape_transforms import (
    accepts_input_size,
    infer_token_grid,
    make_vit_reshape_transform,
    swin_reshape_transform,
)

logger = logging.getLogger("pytorch_cam")

Target = Callable[[Any], torch.Tensor]
TargetLike = Union[Target, int]


@dataclass
class CallState:
    """What one forward/backward pass captured. Created per call and passed along, never stored on the CAM."""

    input_tensor: torch.Tensor
    outputs: Any
    targets: list
    target_scores: Optional[torch.Tensor] = None  # (B,) score of each image's target
    raw_activations: dict = field(default_factory=dict)  # layer index -> layer output as produced
    raw_gradients: dict = field(default_factory=dict)  # layer index -> d(score)/d(layer output)
    input_gradient: Optional[torch.Tensor] = None  # d(score)/d(input) when compute_input_gradient
    cache: dict = field(default_factory=dict)  # per-call scratch space, e.g. results shared by all layers


@dataclass(frozen=True)
class LayerContext:
    """Everything a method may need to explain one target layer in one call.

    ``activations``/``grads`` are in (B, C, *spatial) layout (after the reshape transform);
    ``raw_activations``/``raw_grads`` are the layer's output and its gradient as produced. With
    ``create_graph = True`` on the method they are still attached to the autograd graph (for
    second-order terms, e.g. ShapleyCAM's Hessian-vector product).
    """

    index: int  # position in target_layers (a layer listed twice has two indices)
    layer: nn.Module
    input_tensor: torch.Tensor
    targets: list
    target_scores: torch.Tensor
    outputs: Any
    raw_activations: Any
    activations: torch.Tensor
    raw_grads: Optional[torch.Tensor]
    grads: Optional[torch.Tensor]
    input_gradient: Optional[torch.Tensor]
    reshape: Callable[[torch.Tensor], torch.Tensor]  # raw layer layout -> (B, C, *spatial)
    call: CallState


@dataclass
class Inferred:
    """What a CAM chose for the user on its first call (``None``: nothing was inferred).

    Kept apart from the constructor's arguments: ``cam.target_layers`` and
    ``cam.reshape_transform`` stay exactly what the user passed.
    """

    target_layers: Optional[List[nn.Module]] = None
    reshape_transforms: Dict[int, Callable[..., torch.Tensor]] = field(default_factory=dict)  # layer index -> transform


def min_max_scale(cam: torch.Tensor) -> torch.Tensor:
    """Scale every map in a batch (B, *S) to [0, 1]; a constant map becomes all zeros."""
    flat = cam.reshape(cam.shape[0], -1)
    lo = flat.amin(dim=1, keepdim=True)
    rng = flat.amax(dim=1, keepdim=True) - lo
    safe = torch.where(rng > 0, rng, torch.ones_like(rng))
    scaled = torch.where(rng > 0, (flat - lo) / safe, torch.zeros_like(flat))
    return scaled.reshape(cam.shape)


def resize_maps(cam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize maps (B, *S) to ``size`` with (bi|tri)linear interpolation, half-pixel centres."""
    if tuple(cam.shape[1:]) == tuple(size):
        return cam
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(cam[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]


def first_principal_component(x: torch.Tensor) -> torch.Tensor:
    """Project each image's (C, *S) tensor on its first principal component -> (B, *S).

    Positions are samples and channels are features; the samples are centred before the SVD.
    A principal component's sign is arbitrary, so we fix it: the projection is negated when its
    most negative value is larger in magnitude than its most positive one. This makes the map
    deterministic and points it at the dominant structure.
    """
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    flat = x.reshape(b, c, -1).transpose(1, 2).float()  # (B, N, C)
    centred = flat - flat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = torch.bmm(centred, vh[:, 0, :, None])[..., 0]  # (B, N)
    flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
    proj = torch.where(flip[:, None], -proj, proj)
    return proj.reshape(b, *spatial).to(x.dtype)


def warn_if_all_zero(cam: torch.Tensor, method: str) -> None:
    """Log a warning naming the images whose map is all zero: an empty map is rarely what the user wants."""
    zero = cam.reshape(cam.shape[0], -1).amax(dim=1) <= 0
    if bool(zero.any()):
        logger.warning(
            "%s returned an all-zero map for image(s) %s of the batch: no position has positive evidence for "
            "the target (a constant or 1x1 layer, a target the layer does not influence, or a model whose head "
            "gives the same score everywhere, e.g. random or zero-initialised weights)",
            method,
            zero.nonzero().flatten().tolist(),
        )


def target_score(target: Callable[[Any], Any], output_row: Any) -> torch.Tensor:
    """``target(output_row)`` checked to be a scalar tensor (computed from the output, so gradients flow)."""
    value = target(output_row)
    if not torch.is_tensor(value):
        raise TypeError(
            f"target {target!r} returned {type(value).__name__} {value!r}, not a tensor; a target must return a "
            "scalar tensor computed from the model output it is given (e.g. model_output[281]), so that the "
            "score carries gradients (a Python number is a copy that has lost them)"
        )
    if value.numel() != 1:
        raise ValueError(
            f"target {target!r} returned a tensor of shape {tuple(value.shape)}, not a scalar; a target must "
            "reduce the model output of one image to one score, e.g. model_output[class_index] or "
            "(model_output[class_index] * mask).sum() for a segmentation map"
        )
    return value.reshape(())


def target_scores(
    targets: Sequence[Callable[[Any], Any]], rows: Any, image_index: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Score of each output row: ``targets[i](rows[i])``, or with ``image_index`` (R,) the target of
    the image row j belongs to, ``targets[image_index[j]](rows[j])``.

    Plain class indices (``ClassifierOutputTarget``) on a (R, classes) tensor are one gather, whose
    backward is one scatter: per-row indexing costs two small ops per row each way, which on a GPU
    is a launch-bound millisecond per call. The values and gradients are the same.
    """
    if torch.is_tensor(rows) and rows.ndim == 2 and all(type(t) is ClassifierOutputTarget for t in targets):
        cats = class_indices(targets, rows.shape[1], rows.device)
        if image_index is not None:
            cats = cats[image_index]
        return rows.gather(1, cats[:, None])[:, 0]
    owner = range(len(targets)) if image_index is None else image_index.tolist()
    return torch.stack([target_score(targets[b], rows[j]) for j, b in enumerate(owner)])


def is_tensor_dict(value: Any) -> bool:
    """Whether ``value`` is a non-empty dict of tensors (e.g. an FPN backbone's feature maps)."""
    return isinstance(value, Mapping) and bool(value) and all(torch.is_tensor(v) for v in value.values())


def tree_leaves(value: Any) -> List[torch.Tensor]:
    """The tensors of a layer output: itself, or a dict's values."""
    return list(value.values()) if isinstance(value, Mapping) else [value]


def detach(value: Any) -> Any:
    """A layer output (a tensor or a dict of tensors) detached from the graph."""
    if isinstance(value, Mapping):
        return type(value)((k, v.detach()) for k, v in value.items())
    return value.detach()


def primary_output(outputs: Any) -> Any:
    """The part of a model's output that targets score: the logits of a classifier or segmenter.

    A tensor is itself; a HuggingFace ``ModelOutput`` gives ``.logits``; a dict its ``"out"``
    (torchvision segmentation) or ``"logits"`` entry, or its only tensor; a tuple whose first
    element is a tensor (YOLO-style ``(predictions, features)``, Inception's ``(logits, aux)``)
    its first element. Anything else — a list of per-image dicts from a torchvision detector, a
    dict of several tensors — is returned as it is and handed to the targets image by image.
    """
    if torch.is_tensor(outputs):
        return outputs
    logits = getattr(outputs, "logits", None)
    if torch.is_tensor(logits):
        return logits
    if isinstance(outputs, Mapping):
        for key in ("out", "logits"):
            if torch.is_tensor(outputs.get(key)):
                return outputs[key]
        tensors = [v for v in outputs.values() if torch.is_tensor(v)]
        if len(tensors) == 1 and len(outputs) == 1:
            return tensors[0]
        return outputs
    if isinstance(outputs, tuple) and outputs and torch.is_tensor(outputs[0]):
        return outputs[0]
    return outputs


def describe_output(outputs: Any) -> str:
    """A short description of a model output for error messages, e.g. ``dict{'boxes': (3, 4), ...}``."""
    if torch.is_tensor(outputs):
        return f"a tensor of shape {tuple(outputs.shape)}"
    if isinstance(outputs, Mapping):
        parts = [f"{k!r}: {tuple(v.shape) if torch.is_tensor(v) else type(v).__name__}" for k, v in outputs.items()]
        return f"{type(outputs).__name__}{{{', '.join(parts[:6])}{', ...' if len(parts) > 6 else ''}}}"
    if isinstance(outputs, (list, tuple)):
        inner = describe_output(outputs[0]) if outputs else "nothing"
        return f"a {type(outputs).__name__} of {len(outputs)} items, the first {inner}"
    return type(outputs).__name__


def output_rows(outputs: Any, n: int) -> Any:
    """The model output of each of the ``n`` images, as the targets receive it (indexable by image)."""
    primary = primary_output(outputs)
    if torch.is_tensor(primary):
        if primary.ndim >= 1 and primary.shape[0] == n:
            return primary
    elif isinstance(primary, Mapping):
        values = list(primary.values())
        if values and all(torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n for v in values):
            return [{k: v[i] for k, v in primary.items()} for i in range(n)]
    elif isinstance(primary, (list, tuple)) and len(primary) == n:
        return primary
    raise ValueError(
        f"cannot split the model's output into one result per image for a batch of {n}: the model returned "
        f"{describe_output(outputs)}. Wrap the model so that it returns a (B, ...) tensor, e.g. "
        "lambda x: model(x)[<key>]"
    )


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def resolve_device(device: Union[str, torch.device, None], model: nn.Module) -> torch.device:
    """The device CAM tensors live on: the model's, checked against an explicit request."""
    actual = model_device(model)
    if device is None:
        return actual
    want = torch.device(device)
    if want.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={str(device)!r} was requested but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); use device='cpu' or drop --use-cuda"
        )
    # The CPU is one device whatever its index: 'cpu:0' and torch.device('cpu', 0) name the model's device too.
    index_differs = want.type != "cpu" and want.index is not None and want.index != actual.index
    if want.type != actual.type or index_differs:
        raise ValueError(
            f"device={str(device)!r} but the model's parameters are on {actual}; move the model "
            f"first with model.to({str(device)!r})"
        )
    return actual


class BaseCAM(PerThreadResults, Registered):
    """Abstract base of every CAM method. Subclasses override ``get_cam_weights`` (or one of the
    ``layer_*`` extension points when they need more than grad-cam's five arguments).

    Args:
        model: any ``nn.Module``; it is evaluated in eval mode during a call and restored after.
        target_layers: the modules whose outputs are explained; several give one map each,
            averaged after resizing to the input. ``None`` picks a default (logged at INFO): the
            last block's first norm for torchvision/timm ViT, DeiT and Swin, otherwise the last
            spatial layer before global pooling, found with one dry forward on the first call
            (see ``pytorch_cam.utils.find_layers``). The choice is kept in ``cam.inferred``.
        reshape_transform: turns a layer output that is not (B, C, *spatial) — e.g. ViT tokens
            (B, N, C) — into that layout; applied to activations and gradients alike. It is
            called as ``transform(tensor, input_size=(H, W))`` when its signature has an
            ``input_size`` keyword, else ``transform(tensor)``. ``None`` with token (B, N, C) or
            channels-last Swin (B, H, W, C) outputs infers ``vit_reshape_transform`` /
            ``swin_reshape_transform`` on the first call (logged at INFO), kept in ``cam.inferred``.
        compute_input_gradient: also compute the gradient of the target w.r.t. the input (FullGrad).
        uses_gradients: override the method's own need for gradients (``None``: the method decides).
        tta_transforms: a ``ttach.Compose`` for ``aug_smooth`` (default: flips and brightness).
        detach: ``True`` (the default) returns numpy maps. ``False`` returns the maps as torch
            tensors on the model's device, still attached to the autograd graph, so that a loss on
            them trains the model (e.g. a CAM loss); the activations and gradients keep their graph.
        device: optional check that the model lives where you expect (e.g. ``"cuda"``).
        precision: ``"fp32"`` (exact, the default), ``"bf16"`` or ``"fp16"``: the model's forwards
            (and the backward of gradient methods) run under ``torch.autocast`` for the call only;
            activations, gradients and the map are float32. See ``pytorch_cam.utils.precision``.
    """

    #: whether the method needs gradients of the target w.r.t. the activations
    uses_gradients: bool = True
    #: whether the map is always the first principal component of the weighted activations
    always_project: bool = False
    #: keep the gradients attached to the graph (second-order methods, e.g. ShapleyCAM)
    create_graph: bool = False
    #: whether the map depends on the target; class-agnostic methods (EigenCAM, ...) also explain
    #: models whose output has no class scores (detectors, backbones) with ``targets=None``
    needs_targets: bool = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[Sequence[nn.Module], nn.Module, None] = None,
        reshape_transform: Optional[Callable[..., torch.Tensor]] = None,
        compute_input_gradient: bool = False,
        uses_gradients: Optional[bool] = None,
        tta_transforms: Any = None,
        detach: bool = True,
        device: Union[str, torch.device, None] = None,
        precision: str = "fp32",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        eager = eager_model(model)
        if eager is not model:
            logger.info(
                "%s: the model is compiled (torch.compile); explaining its original module eagerly, since compiled "
                "code ignores the hooks a CAM needs. The maps are those of the same function and weights",
                type(self).__name__,
            )
        self.model = model = eager
        self.inferred = Inferred()
        if isinstance(target_layers, nn.Module):
            target_layers = [target_layers]
        if target_layers is None:
            # Transformer families are known now (and logged); other models need the first call's
            # input for a dry forward, so their default is found lazily in forward().
            if find_transformer_target_layers(model) is not None:
                self.inferred.target_layers = find_default_target_layers(model)
        elif len(target_layers) == 0:
            raise ValueError(
                "target_layers is empty; pass the modules to explain, e.g. "
                "target_layers=[model.layer4[-1]] for a ResNet, or target_layers=None for a default"
            )
        known = {id(m) for m in model.modules()}
        for layer in target_layers or []:
            if not isinstance(layer, nn.Module):
                raise TypeError(f"each target layer must be an nn.Module, got {type(layer).__name__}")
            if id(layer) not in known:
                raise ValueError(
                    f"target layer {type(layer).__name__} is not a submodule of the model; pass a "
                    "module taken from this model, e.g. model.layer4[-1]"
                )
        self.target_layers: Optional[list] = None if target_layers is None else list(target_layers)
        self.reshape_transform = reshape_transform
        self.compute_input_gradient = compute_input_gradient
        if uses_gradients is not None:
            self.uses_gradients = uses_gradients
        self.tta_transforms = tta_transforms
        self.detach = bool(detach)
        self.device = resolve_device(device, model)
        self.precision = check_precision(precision)
        # What the last call captured, per thread (grad-cam's cam.outputs / cam.activations_and_grads):
        # one CAM object may serve several threads, and each must see its own call's results.
        self._init_per_thread_results()

    @property
    def outputs(self) -> Any:
        """The model's outputs in this thread's last call (detached unless ``detach=False``); None before one."""
        call = getattr(self._last, "call", None)
        return None if call is None else call.outputs

    @property
    def activations_and_grads(self) -> Any:
        """This thread's last call as a grad-cam ``ActivationsAndGradients``: ``.activations`` and ``.gradients``.

        One (B, C, *spatial) tensor per target layer, after the reshape transform; on the CPU and
        detached when ``detach=True``, as in pytorch-grad-cam. Hooks are not left on the model:
        these are a record of the call, built when this property is read.
        """
        from pytorch_cam.activations_and_gradients import ActivationsAndGradients

        call = getattr(self._last, "call", None)
        record = ActivationsAndGradients(self.model, self.layers, self.reshape_transform, self.detach)
        if call is not None:
            for i in range(len(self.layers)):
                ctx = self.layer_context(call, i)
                record.activations.append(record.keep(ctx.activations))
                if ctx.grads is not None:
                    record.gradients.append(record.keep(ctx.grads))
        return record

    @property
    def display_name(self) -> str:
        """How messages name the method (a meta-method's variant of its base method overrides it)."""
        return type(self).__name__

    @property
    def layers(self) -> List[nn.Module]:
        """The target layers in use: the user's, else the inferred default (empty before it is known)."""
        if self.target_layers is not None:
            return self.target_layers
        return self.inferred.target_layers or []

    # ------------------------------------------------------------------ extension points
    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layers: nn.Module,
        targets: list,
        activations: torch.Tensor,
        grads: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Channel weights (B, C), or element-wise weights shaped like ``activations``.

        pytorch-grad-cam's extension point, kept for custom subclasses (``target_layers`` is the
        one layer being explained, under the peer's name); methods that need more (the layer's
        index, the target scores, the raw output) override ``layer_weights``.
        """
        raise NotImplementedError

    def layer_weights(self, ctx: LayerContext) -> torch.Tensor:
        """Channel (B, C) or element-wise weights for one layer; defaults to ``get_cam_weights``."""
        return self.get_cam_weights(ctx.input_tensor, ctx.layer, ctx.targets, ctx.activations, ctx.grads)

    def layer_weighted_activations(self, ctx: LayerContext) -> torch.Tensor:
        """The (B, C, *S) tensor whose channel sum (or first principal component) is the map."""
        weights = self.layer_weights(ctx)
        activations = ctx.activations
        if weights.ndim == 2:
            weights = weights.reshape(*weights.shape, *([1] * (activations.ndim - 2)))
        return weights.to(activations.dtype) * activations

    def layer_cam(self, ctx: LayerContext, eigen_smooth: bool) -> torch.Tensor:
        """One layer's map (B, *S) at the layer's resolution, before the ReLU and scaling."""
        weighted = self.layer_weighted_activations(ctx)
        if eigen_smooth or self.always_project:
            return first_principal_component(weighted)
        return weighted.sum(dim=1)

    # ------------------------------------------------------------------ public API
    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[Sequence[TargetLike]] = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> Union[np.ndarray, torch.Tensor]:
        return self.forward(input_tensor, targets, eigen_smooth, aug_smooth=aug_smooth)

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[Sequence[TargetLike]] = None,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
    ) -> Union[np.ndarray, torch.Tensor]:
        """Compute one map per image: float32 (B, *input spatial) in [0, 1].

        A numpy array, or with ``detach=False`` a torch tensor on the model's device that is still
        attached to the autograd graph.
        """
        x = self._check_input(input_tensor)
        self.ensure_layers(x)
        if aug_smooth:
            cam = self._forward_augmented(x, targets, eigen_smooth)
        else:
            cam = self.forward_tensor(x, targets, eigen_smooth)
        warn_if_all_zero(cam.detach(), self.display_name)
        if not self.detach:
            return cam.float()
        return cam.detach().float().cpu().numpy()

    def run_model(self, x: torch.Tensor, memory_format: Optional[str] = None) -> Any:
        """The model's outputs for ``x`` at the CAM's precision (float32 results), ``x`` in ``memory_format``.

        The forward of extra passes (scoring perturbed inputs, test-time augmentation) goes
        through here; the caller chooses the grad mode and holds eval mode.
        """
        with autocast(x.device, self.precision):
            outputs = self.model(to_memory_format(x, memory_format))
        return float32_outputs(outputs) if self.precision != "fp32" else outputs

    def ensure_layers(self, x: torch.Tensor) -> List[nn.Module]:
        """The target layers, finding the default with a dry forward on ``x`` if none is known yet."""
        if not self.layers:
            self.inferred.target_layers = find_default_target_layers(self.model, x[:1])
        return self.layers

    def release(self) -> None:
        """Kept for API compatibility: hooks only exist during a call, so there is nothing left."""

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> None:
        # Never return True: an exception raised inside ``with`` always propagates.
        self.release()

    # ------------------------------------------------------------------ pytorch-grad-cam's pipeline steps
    # Kept so code written against pytorch-grad-cam's BaseCAM keeps working; our own pipeline runs
    # through forward_tensor and the layer_* extension points.
    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple:
        """(W, H) of a 2-D batch, (D, W, H) of a volume batch (pytorch-grad-cam's order: last dim first)."""
        if input_tensor.ndim not in (4, 5):
            raise ValueError(f"expected a (B, C, H, W) or (B, C, D, H, W) batch, got shape {tuple(input_tensor.shape)}")
        return tuple(int(s) for s in reversed(input_tensor.shape[2:]))

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: list,
        activations: Any,
        grads: Any,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """One layer's map (B, *S) at the layer's resolution, before the ReLU, from given (B, C, *S)
        activations and gradients (numpy arrays or tensors), as this method computes it."""
        device = self.device

        def as_tensor(a: Any) -> Optional[torch.Tensor]:
            return None if a is None else torch.as_tensor(a).to(device)

        acts, grad = as_tensor(activations), as_tensor(grads)
        index = next((i for i, layer in enumerate(self.layers) if layer is target_layer), 0)
        call = CallState(input_tensor=input_tensor, outputs=None, targets=list(targets or []))
        ctx = LayerContext(
            index=index,
            layer=target_layer,
            input_tensor=input_tensor,
            targets=call.targets,
            target_scores=None,
            outputs=None,
            raw_activations=acts,
            activations=acts,
            raw_grads=grad,
            grads=grad,
            input_gradient=None,
            reshape=lambda tensor, what="tensor": tensor,
            call=call,
        )
        with torch.no_grad():
            return self.layer_cam(ctx, eigen_smooth).float().cpu().numpy()

    def compute_cam_per_layer(
        self, input_tensor: torch.Tensor, targets: Optional[Sequence[TargetLike]], eigen_smooth: bool
    ) -> List[np.ndarray]:
        """One map per target layer, each (B, 1, *input spatial), rectified and scaled to [0, 1]."""
        x = self._check_input(input_tensor)
        self.ensure_layers(x)
        with self._eval_mode():
            call = self.capture_pass(x, targets)
            maps = [self._layer_map(self.layer_context(call, i), eigen_smooth) for i in range(len(self.layers))]
        return [m[:, None].detach().cpu().numpy() for m in maps]

    def aggregate_multi_layers(self, cam_per_target_layer: Sequence[np.ndarray]) -> np.ndarray:
        """The mean of per-layer maps (each (B, 1, *S)), rectified and scaled to [0, 1] per image."""
        stacked = torch.relu(torch.as_tensor(np.concatenate(list(cam_per_target_layer), axis=1)))
        return min_max_scale(stacked.mean(dim=1)).numpy()

    def forward_augmentation_smoothing(
        self, input_tensor: torch.Tensor, targets: Optional[Sequence[TargetLike]], eigen_smooth: bool = False
    ) -> Union[np.ndarray, torch.Tensor]:
        """``forward`` with test-time augmentation (``aug_smooth=True``)."""
        return self.forward(input_tensor, targets, eigen_smooth, aug_smooth=True)

    # ------------------------------------------------------------------ pipeline
    def _check_input(self, input_tensor: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(input_tensor):
            raise TypeError(
                f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}; "
                "convert images with pytorch_cam.utils.image.preprocess_image"
            )
        if input_tensor.ndim not in (4, 5):
            hint = " Add the batch dimension with x.unsqueeze(0)." if input_tensor.ndim == 3 else ""
            raise ValueError(
                f"input_tensor must be a batch of shape (B, C, H, W) (or (B, C, D, H, W) for "
                f"volumes); got a {input_tensor.ndim}-D tensor of shape "
                f"{tuple(input_tensor.shape)}.{hint}"
            )
        if not input_tensor.is_floating_point():
            raise TypeError(
                f"input_tensor must be a floating point tensor, got {input_tensor.dtype}; "
                "normalise images with pytorch_cam.utils.image.preprocess_image"
            )
        if input_tensor.shape[0] == 0:
            raise ValueError(
                f"input_tensor holds no images (shape {tuple(input_tensor.shape)}); pass a batch of at least one "
                "image, e.g. preprocess_image(rgb) of shape (1, 3, H, W)"
            )
        param_dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), None)
        if param_dtype is not None and param_dtype != input_tensor.dtype:
            raise TypeError(
                f"input_tensor is {input_tensor.dtype} but the model's parameters are {param_dtype}; convert one "
                f"to the other, e.g. input_tensor.to({param_dtype}) (or model.float() for a float32 input)"
            )
        if self.uses_gradients and torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} was called inside torch.inference_mode(), which disables autograd for "
                "good; gradient methods need it: call the CAM outside the inference_mode block (a CAM call "
                "never trains the model), or use a gradient-free method such as EigenCAM or ScoreCAM"
            )
        x = input_tensor.detach().to(self.device)
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = (~finite).reshape(x.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(
                f"input_tensor contains NaN or Inf values (images {bad} of the batch); "
                "clean the input, e.g. with torch.nan_to_num, before computing a CAM"
            )
        return x

    def _resolve_targets(self, targets: Optional[Sequence[TargetLike]], outputs: Any, n: int) -> list:
        if targets is None:
            logits = primary_output(outputs)
            if torch.is_tensor(logits) and logits.ndim == 2 and logits.shape[0] == n:
                return [ClassifierOutputTarget(c) for c in logits.argmax(dim=-1).tolist()]
            if not self.needs_targets:
                return [None] * n  # the map does not depend on a target
            raise ValueError(
                f"targets=None picks each image's top class, which needs (B, classes) logits; this model returned "
                f"{describe_output(outputs)}. Pass one target per image: SemanticSegmentationTarget(category, mask) "
                "for segmentation, FasterRCNNBoxScoreTarget(labels, boxes) for a torchvision detector, or a "
                "callable(output_of_one_image) -> scalar tensor; or use a class-agnostic method (EigenCAM, "
                "KPCA_CAM), which needs no target"
            )
        if torch.is_tensor(targets):
            if targets.ndim != 1 or targets.is_floating_point() or targets.is_complex():
                raise TypeError(
                    f"targets given as a tensor must be a 1-D tensor of class indices, one per image; got a "
                    f"{targets.dtype} tensor of shape {tuple(targets.shape)}"
                )
            targets = targets.tolist()
        if isinstance(targets, (int, np.integer)) or callable(targets):
            raise TypeError("targets must be a list with one target per image, e.g. [ClassifierOutputTarget(281)]")
        targets = list(targets)
        if len(targets) != n:
            raise ValueError(
                f"got {len(targets)} targets for a batch of {n} images; pass exactly one target per "
                "image (or targets=None for each image's top class)"
            )
        resolved = []
        for t in targets:
            if torch.is_tensor(t) and t.numel() == 1 and not (t.is_floating_point() or t.dtype == torch.bool):
                t = int(t.item())
            if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
                resolved.append(ClassifierOutputTarget(int(t)))
            elif callable(t):
                resolved.append(t)
            else:
                raise TypeError(f"a target must be a class index or a callable(model_output) -> scalar, got {t!r}")
        return resolved

    def _eval_mode(self) -> Any:
        return eval_mode(self.model)

    @contextmanager
    def _capture(self, need_grads: bool) -> Iterator[dict]:
        """Forward hooks on the target layers for the duration of one forward pass."""
        store: dict = {}
        calls: Dict[int, int] = {}
        handles = []

        def leaf(tensor: torch.Tensor) -> torch.Tensor:
            if need_grads and not tensor.requires_grad:
                # The network before the target layer ran without autograd (see capture_pass),
                # or the trunk is frozen: record the rest of the forward from here on, without
                # touching the user's requires_grad flags.
                torch.set_grad_enabled(True)
                tensor = tensor.detach().requires_grad_(True)
            return tensor

        def make_hook(index: int, layer: nn.Module):
            def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
                calls[index] = calls.get(index, 0) + 1
                if is_tensor_dict(output):
                    # A dict of feature maps (e.g. a detector's FPN backbone): every map is captured, and
                    # the reshape transform (e.g. fasterrcnn_reshape_transform) merges them.
                    tensor = type(output)((k, leaf(v)) for k, v in output.items())
                    store[index] = tensor
                    return type(output)((k, v.clone()) for k, v in tensor.items())
                tensor = output[0] if isinstance(output, (tuple, list)) else output
                if not torch.is_tensor(tensor):
                    raise TypeError(
                        f"target layer {index} ({type(layer).__name__}) returned "
                        f"{type(output).__name__}, not a tensor; choose a layer that outputs a tensor"
                    )
                tensor = leaf(tensor)
                store[index] = tensor
                # The model continues on a copy: in-place ops after the layer (ReLU(inplace=True),
                # ResNet's `out += identity`) would otherwise overwrite the captured activation and
                # make autograd return the gradient w.r.t. the modified tensor instead.
                replaced = tensor.clone()
                if isinstance(output, tuple):
                    return (replaced, *output[1:])
                if isinstance(output, list):
                    return [replaced, *output[1:]]
                return replaced

            return hook

        try:
            for i, layer in enumerate(self.layers):
                handles.append(layer.register_forward_hook(make_hook(i, layer)))
            yield store
        finally:
            for h in handles:
                h.remove()
        for index, n in calls.items():
            if n > 1:
                logger.warning(
                    "target layer %s ran %d times in one forward pass (a module reused in the model); its last "
                    "call is explained. To explain another call, pass a module that only runs there",
                    self._layer_name(index),
                    n,
                )

    def _layer_name(self, index: int) -> str:
        layer = self.layers[index]
        for name, m in self.model.named_modules():
            if m is layer:
                return f"'{name}' ({type(layer).__name__})"
        return type(layer).__name__

    def forward_tensor(
        self, x: torch.Tensor, targets: Optional[Sequence[TargetLike]], eigen_smooth: bool
    ) -> torch.Tensor:
        """The whole pipeline for one (un-augmented) batch; returns maps (B, *S) in [0, 1] on the device."""
        with self._eval_mode():
            call = self.capture_pass(x, targets)
            cam = self.combine_layers(call, eigen_smooth)
        return min_max_scale(cam)

    def capture_pass(
        self, x: torch.Tensor, targets: Optional[Sequence[TargetLike]], need_grads: Optional[bool] = None
    ) -> CallState:
        """One forward (and, for gradient methods, backward) pass on ``x`` with the layers hooked.

        Returns the pass's ``CallState``. Methods that need extra passes (e.g. on noisy copies of
        the input) call it again; the caller holds eval mode.
        """
        if need_grads is None:
            need_grads = self.uses_gradients
        differentiable = not self.detach  # the map must stay attached to the model's parameters
        grad_ctx = torch.enable_grad() if need_grads or differentiable else torch.no_grad()
        input_grad = need_grads and self.compute_input_gradient
        # The gradient only flows from the scores back to the target layers, so the network before
        # them runs without autograd and the capture hook switches it on (about one plain forward
        # pass in all). The input gradient, and detach=False, need the whole graph.
        whole_graph = input_grad or differentiable
        forward_ctx = grad_ctx if whole_graph else torch.no_grad()
        with forward_ctx, self._capture(need_grads) as store, autocast(x.device, self.precision):
            x_in = x.detach().requires_grad_(True) if input_grad else x
            outputs = self.model(x_in)
            # The capture hook left autograd on; a no_grad block of the model's own around the
            # target layer switched it back off on exit.
            forward_disabled_grad = need_grads and not whole_graph and not torch.is_grad_enabled()
        if self.precision != "fp32":
            with grad_ctx:  # the cast is part of the score's graph (callers may hold no_grad)
                outputs = float32_outputs(outputs)
        n_layers = len(self.layers)
        missing = [i for i in range(n_layers) if i not in store]
        if missing:
            names = ", ".join(self._layer_name(i) for i in missing)
            raise RuntimeError(
                f"target layer {names} was never reached by the model's forward pass; "
                "pick a module that the forward actually calls (print(model) lists them)"
            )
        resolved = self._resolve_targets(targets, outputs, x.shape[0])
        call = CallState(input_tensor=x, outputs=outputs, targets=resolved)
        if any(t is None for t in resolved):
            if need_grads:
                raise ValueError(
                    f"{self.display_name} needs a target for every image (its map is the gradient of a score); "
                    f"the model returned {describe_output(outputs)}, which has no class scores to pick from: "
                    "pass targets"
                )
            scores = None
        else:
            rows = output_rows(outputs, x.shape[0])
            with grad_ctx:
                scores = target_scores(resolved, rows)
                total = scores.sum()  # inside grad_ctx: callers may hold no_grad (extra passes from a method)
            call.target_scores = scores.detach()
        keep_graph = need_grads and (self.create_graph or differentiable)
        if need_grads:
            if forward_disabled_grad or not scores.requires_grad:
                raise RuntimeError(
                    "the target scores carry no gradient: the model's forward seems to run "
                    "under torch.no_grad() or torch.inference_mode(). Gradient methods "
                    "(GradCAM, GradCAM++, XGradCAM, ...) need autograd; remove the no_grad "
                    "from forward or use a gradient-free method (ScoreCAM, AblationCAM, EigenCAM)"
                )
            # Dict-valued layers contribute one tensor per entry; their gradients are put back in a dict.
            wrt = [t for i in range(n_layers) for t in tree_leaves(store[i])]
            if self.compute_input_gradient:
                wrt.append(x_in)
            with torch.enable_grad():
                grads = torch.autograd.grad(total, wrt, allow_unused=True, create_graph=keep_graph)
            missing_grad = set()
            flat = []
            for t, g in zip(wrt, grads):
                if g is None:
                    g = torch.zeros_like(t)
                    missing_grad.add(id(t))
                flat.append(float32_outputs(g if keep_graph else g.detach()))
            pos = 0
            for i in range(n_layers):
                leaves = tree_leaves(store[i])
                if all(id(t) in missing_grad for t in leaves):
                    logger.warning(
                        "the target score does not depend on target layer %s; its gradient is zero",
                        self._layer_name(i),
                    )
                if torch.is_tensor(store[i]):
                    call.raw_gradients[i] = flat[pos]
                else:
                    call.raw_gradients[i] = type(store[i])(zip(store[i].keys(), flat[pos : pos + len(leaves)]))
                pos += len(leaves)
            if self.compute_input_gradient:
                g = grads[-1]
                call.input_gradient = torch.zeros_like(x) if g is None else float32_outputs(g.detach())
        attached = keep_graph or differentiable
        # Second-order methods differentiate the gradients w.r.t. the captured tensor itself: a float32
        # copy of a reduced-precision activation would be off that graph.
        call.raw_activations = {
            i: store[i] if keep_graph else float32_outputs(store[i] if attached else detach(store[i]))
            for i in range(n_layers)
        }
        if not differentiable:
            call.outputs = outputs.detach() if torch.is_tensor(outputs) else outputs
            # The record kept for cam.outputs / cam.activations_and_grads must not hold a graph alive.
            self._last.call = dataclasses.replace(
                call,
                raw_activations={i: detach(a) for i, a in call.raw_activations.items()},
                raw_gradients={i: detach(g) for i, g in call.raw_gradients.items()},
            )
        else:
            self._last.call = call
        return call

    def combine_layers(self, call: CallState, eigen_smooth: bool) -> torch.Tensor:
        """Maps (B, *S) at input resolution from all target layers: the mean of the per-layer maps.

        Extension point for methods whose layers are not explained one by one (e.g. FullGrad).
        """
        maps = [self._layer_map(self.layer_context(call, i), eigen_smooth) for i in range(len(self.layers))]
        return torch.stack(maps, dim=1).mean(dim=1)

    def layer_context(self, call: CallState, index: int) -> LayerContext:
        """The ``LayerContext`` of target layer ``index`` in ``call`` (activations reshaped, checked)."""
        size = tuple(call.input_tensor.shape[2:])
        raw = call.raw_activations[index]
        transform = self._layer_transform(raw, index, size)

        def reshape(tensor: torch.Tensor, what: str = "tensor") -> torch.Tensor:
            return self._to_spatial(tensor, index, what, transform, size)

        acts = reshape(raw, "activations")
        batch = call.input_tensor.shape[0]
        if acts.shape[0] != batch:
            raise ValueError(
                f"target layer {self._layer_name(index)} produced activations of shape {tuple(acts.shape)} for a batch "
                f"of {batch} images: its output is not per image (e.g. a parameter or a position table); choose a "
                "layer whose output has one row per image"
            )
        raw_grads = call.raw_gradients.get(index)
        grads = reshape(raw_grads, "gradients") if raw_grads is not None else None
        if math.prod(acts.shape[2:]) == 1:
            logger.warning(
                "target layer %s has a 1x1 spatial output %s: its map has one value per image and so scales to "
                "all zeros; choose an earlier layer with a spatial map (e.g. before global pooling)",
                self._layer_name(index),
                tuple(acts.shape),
            )
        if not bool(torch.isfinite(acts).all()):
            raise RuntimeError(
                f"target layer {self._layer_name(index)} produced NaN/Inf activations for a finite "
                "input; check the model (e.g. its normalisation) before explaining it"
            )
        return LayerContext(
            index=index,
            layer=self.layers[index],
            input_tensor=call.input_tensor,
            targets=call.targets,
            target_scores=call.target_scores,
            outputs=call.outputs,
            raw_activations=raw,
            activations=acts,
            raw_grads=raw_grads,
            grads=grads,
            input_gradient=call.input_gradient,
            reshape=reshape,
            call=call,
        )

    def _layer_transform(self, tensor: torch.Tensor, index: int, size: tuple) -> Optional[Callable]:
        """The reshape transform of layer ``index``: the user's, else the inferred one (inferring it once)."""
        if self.reshape_transform is not None:
            return self.reshape_transform
        if isinstance(tensor, Mapping):
            raise ValueError(
                f"target layer {self._layer_name(index)} returned a dict of feature maps ({describe_output(tensor)}); "
                "pass a reshape_transform that merges them into one (B, C, H, W) tensor, e.g. "
                "fasterrcnn_reshape_transform from pytorch_cam.utils.reshape_transforms for a torchvision detector's "
                "FPN backbone"
            )
        if index not in self.inferred.reshape_transforms:
            self.inferred.reshape_transforms[index] = self._infer_reshape_transform(tensor, index, size)
        return self.inferred.reshape_transforms[index]

    def layer_reshape_transform(self, index: int) -> Optional[Callable]:
        """The reshape transform in use for target layer ``index`` (``None``: none needed or not yet known)."""
        if self.reshape_transform is not None:
            return self.reshape_transform
        return self.inferred.reshape_transforms.get(index)

    def _infer_reshape_transform(self, tensor: torch.Tensor, index: int, size: tuple) -> Optional[Callable]:
        """With no reshape_transform, recognise token / channels-last outputs and pick one."""
        if tensor.ndim == 3 and len(size) == 2:
            prefix = known_num_prefix_tokens(self.model)
            try:
                grid = infer_token_grid(tensor.shape[1], size, num_prefix_tokens=prefix)
            except ValueError as err:
                raise ValueError(
                    f"target layer {self._layer_name(index)} produced token-shaped activations "
                    f"{tuple(tensor.shape)} (B, tokens, channels) and no reshape_transform was given; "
                    f"inferring the patch grid failed: {err}"
                ) from err
            logger.info(
                "target layer %s outputs tokens %s: inferred %d prefix token(s) and a %dx%d patch grid "
                "for the %dx%d input; using vit_reshape_transform(num_prefix_tokens=%d)",
                self._layer_name(index),
                tuple(tensor.shape),
                grid.prefix,
                grid.height,
                grid.width,
                *size,
                grid.prefix,
            )
            return make_vit_reshape_transform(num_prefix_tokens=grid.prefix)
        if tensor.ndim == 4:
            channels_last = guess_channels_last(self.model, self.layers[index], tensor.shape)
            if channels_last is None:
                raise ValueError(
                    f"target layer {self._layer_name(index)} produced {tuple(tensor.shape)}, which may be "
                    "channels-last (B, H, W, C) or channels-first (B, C, H, W): both dims 1 and 3 match a "
                    "channel width of the layer. Pass reshape_transform=swin_reshape_transform (from "
                    "pytorch_cam.utils.reshape_transforms) if it is channels-last (Swin); if it is "
                    "(B, C, H, W), use an input whose size makes the last dim differ from the channels"
                )
            if channels_last:
                logger.info(
                    "target layer %s outputs a channels-last (B, H, W, C) map %s; using swin_reshape_transform",
                    self._layer_name(index),
                    tuple(tensor.shape),
                )
                return swin_reshape_transform
        return None

    def _to_spatial(
        self, tensor: torch.Tensor, index: int, what: str, transform: Optional[Callable], size: tuple
    ) -> torch.Tensor:
        if transform is not None:
            tensor = transform(tensor, input_size=size) if accepts_input_size(transform) else transform(tensor)
        if tensor.ndim < 3:
            raise ValueError(
                f"target layer {self._layer_name(index)} produced {what} of shape "
                f"{tuple(tensor.shape)}, which has no spatial dimensions; choose a layer before "
                "global pooling (e.g. model.layer4[-1] for a ResNet)"
            )
        if tensor.ndim == 3:
            hint = (
                "pass reshape_transform=vit_reshape_transform (from pytorch_cam.utils."
                "reshape_transforms) for ViT/DeiT tokens, or swin_reshape_transform for Swin"
                if transform is None
                else "your reshape_transform must return (B, C, H, W)"
            )
            raise ValueError(
                f"target layer {self._layer_name(index)} produced token-shaped {what} "
                f"{tuple(tensor.shape)} (B, tokens, channels) instead of (B, C, H, W); {hint}"
            )
        return tensor

    def _layer_map(self, ctx: LayerContext, eigen_smooth: bool) -> torch.Tensor:
        """One layer's map, rectified, scaled to [0, 1] and resized to the input."""
        with torch.no_grad() if self.detach else contextlib.nullcontext():
            cam = torch.relu(self.layer_cam(ctx, eigen_smooth)).float()
            return resize_maps(min_max_scale(cam), ctx.input_tensor.shape[2:])

    def _forward_augmented(
        self, x: torch.Tensor, targets: Optional[Sequence[TargetLike]], eigen_smooth: bool
    ) -> torch.Tensor:
        """Test-time augmentation: a map per augmented copy, de-augmented, then averaged."""
        if x.ndim != 4:
            raise ValueError("aug_smooth supports 2-D image batches (B, C, H, W) only")
        import ttach as tta

        transforms = self.tta_transforms
        if transforms is None:
            transforms = tta.Compose([tta.HorizontalFlip(), tta.Multiply(factors=[0.9, 1, 1.1])])
        if targets is None:
            # Explain the class predicted for the original image in every augmented copy.
            with self._eval_mode(), torch.no_grad():
                outputs = self.run_model(x)
            targets = self._resolve_targets(None, outputs, x.shape[0])
            del outputs
        total = None
        count = 0
        for transformer in transforms:
            augmented = transformer.augment_image(x)
            cam = self.forward_tensor(augmented, targets, eigen_smooth)
            cam = transformer.deaugment_mask(cam[:, None])[:, 0]
            total = cam if total is None else total + cam
            count += 1
        return total / count
