"""Ablation-CAM.

Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network via
Gradient-free Localization", WACV 2020.
https://openaccess.thecvf.com/content_WACV_2020/html/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.html

Gradient-free. Channel k of the target layer's output is set to zero and the rest of the
network is run again; the relative drop of the target score is the channel's weight:

    w_k = (y - y_k) / y            (y: original score, y_k: score with channel k zeroed)
    L   = ReLU(sum_k w_k A_k)

Ablated copies of several channels (and several images) are scored per forward pass.
``ratio_channels_to_ablate < 1`` ablates only the channels with the largest maximum activation;
the others get weight 0. Channels are the layer output's dimension 1, or its last dimension
when a ``reshape_transform`` is given (token layouts keep channels last).

Speed: the ablated copies only need the network *after* the target layer. Where the model can
be traced with ``torch.fx``, it is split at the target layer once per (model, layer) and only
the tail runs for the ablated batches; values computed before the layer and used after it
(e.g. a residual connection that crosses it) are computed once and fed to the tail. The split
is checked once against the model's own scores. Models that cannot be traced (data-dependent
control flow, a layer called twice, tuple outputs) fall back to a forward hook that replaces
the layer's output in a full forward pass. Which path ran is logged at DEBUG level on the
``"pytorch_cam"`` logger.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from pytorch_cam.base_cam import LayerContext, describe_output, logger
from pytorch_cam.perturbation import DEFAULT_BATCH_SIZE, PerturbationCAM, check_ratio, relative_drop, top_channels
from pytorch_cam.utils.fx_split import TailSplit, pooled_linear_head, split_after
from pytorch_cam.utils.model_targets import ClassifierOutputTarget, class_indices
from pytorch_cam.utils.precision import float32_outputs, to_memory_format


def _crossing_rows(crossing: List[Any], rows: torch.Tensor, n: int) -> List[Any]:
    """The values that cross the split, for image ``rows``: per-image tensors indexed, the rest as they are."""
    return [v[rows] if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == n > 1 else v for v in crossing]


class AblationCAM(PerturbationCAM, name="ablationcam"):
    def __init__(
        self,
        model: nn.Module,
        target_layers,
        reshape_transform=None,
        ablation_layer: Any = None,
        batch_size: Union[int, str] = DEFAULT_BATCH_SIZE,
        ratio_channels_to_ablate: float = 1.0,
        progress: bool = True,
        device=None,
        **kwargs,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform=reshape_transform,
            batch_size=batch_size,
            device=device,
            progress=progress,
            **kwargs,
        )
        for name in ("activations_to_be_ablated", "set_next_batch"):
            if ablation_layer is not None and not callable(getattr(ablation_layer, name, None)):
                raise TypeError(
                    f"ablation_layer must follow pytorch-grad-cam's ablation-layer protocol (it has no {name}()); "
                    "pass AblationLayer(), AblationLayerVit() or AblationLayerFasterRCNN() from "
                    "pytorch_cam.ablation_layer, or None (the default) for exact zeroing"
                )
        #: None: exact zeroing, batched over images and channels; else pytorch-grad-cam's ablation layer
        self.ablation_layer = ablation_layer
        # The layer object carries state between its protocol calls: one call at a time uses it.
        self._ablation_layer_lock = threading.Lock()
        self.ratio_channels_to_ablate = check_ratio(ratio_channels_to_ablate)
        if self.precision != "fp32":
            logger.warning(
                "AblationCAM: precision=%r applies to the capture pass only; the ablated copies are scored in fp32, "
                "because one channel's ablation moves the score by less than %s can resolve",
                self.precision,
                self.precision,
            )
        self._splits: Dict[int, Optional[TailSplit]] = {}  # id(layer) -> split, None: not splittable

    def run_with_layer_output(
        self, layer: nn.Module, input_rows: torch.Tensor, new_output: Any, memory_format: Optional[str] = None
    ) -> Any:
        """Model outputs when ``layer`` produces ``new_output`` instead of its own result.

        ``new_output`` is a tensor, or a callable (e.g. an ablation layer) applied to the layer's output.
        """

        ran = []
        make = new_output if callable(new_output) and not torch.is_tensor(new_output) else None

        def replace(module: nn.Module, inputs: Any, output: Any) -> Any:
            ran.append(True)
            if make is not None:
                return make(output)
            if isinstance(output, tuple):
                return (new_output, *output[1:])
            if isinstance(output, list):
                return [new_output, *output[1:]]
            return new_output

        handle = layer.register_forward_hook(replace)
        try:
            outputs = self.model(to_memory_format(input_rows, memory_format))
        finally:
            handle.remove()
        if not ran:
            # Without this check every ablated score equals the original one and the map is noise.
            raise RuntimeError(
                f"AblationCAM could not ablate target layer {type(layer).__name__}: the model's forward ran without "
                "calling the layer's hooks (a compiled or scripted model ignores hooks added after compilation); "
                "pass the uncompiled model, e.g. compiled._orig_mod"
            )
        return outputs

    def tail_split(self, layer: nn.Module) -> Optional[TailSplit]:
        """The cached fx split of the model after ``layer``, or None when it cannot be split."""
        key = id(layer)
        if key not in self._splits:
            try:
                self._splits[key] = split_after(self.model, layer)
            except Exception as exc:  # any tracing failure means: use the hook path instead
                logger.debug(
                    "AblationCAM: cannot split the model after %s with torch.fx (%s: %s); falling back "
                    "to the forward-hook path, which runs the whole model for every ablated batch",
                    type(layer).__name__,
                    type(exc).__name__,
                    exc,
                )
                self._splits[key] = None
        return self._splits[key]

    def _tail_runner(self, ctx: LayerContext):
        """A function (image rows, new layer output) -> model outputs; the fx tail where possible."""
        layer, input_tensor, raw, targets = ctx.layer, ctx.input_tensor, ctx.raw_activations, ctx.targets
        split = self.tail_split(layer) if torch.is_tensor(raw) else None
        if split is not None:
            crossing = split.crossing(input_tensor)
            n = input_tensor.shape[0]
            # A tensor not batched per image cannot be split into rows; a plain int equal to the batch size is
            # most likely x.shape[0] baked into the tail (timm's Swin reshapes with it).
            if any(
                (torch.is_tensor(v) and (v.ndim == 0 or v.shape[0] not in (1, n))) or (type(v) is int and v == n)
                for v in crossing
            ):
                split = None
                logger.debug(
                    "AblationCAM: a value crossing %s is not batched per image; falling back to the forward-hook path",
                    type(layer).__name__,
                )
        if split is not None and not split.verified:
            # Check once that the tail reproduces the model's own target scores, on one row more than
            # the batch: a trace that baked the batch size in (e.g. a view to a constant shape) fails here.
            rows = torch.arange(n + 1, device=input_tensor.device) % n  # the batch, then its first image again
            try:
                got = self.score_rows(self.run_tail(split, raw[rows], _crossing_rows(crossing, rows, n)), targets, rows)
            except Exception as exc:  # the tail cannot run other batch sizes: use the hook path
                logger.debug(
                    "AblationCAM: the torch.fx tail failed on a new batch size (%s: %s)", type(exc).__name__, exc
                )
                got = None
            want = ctx.target_scores.to(input_tensor.device)[rows]
            # Reduced precision rounds the tail and the model's own pass differently; a wrong trace
            # (e.g. a baked-in batch size) is off by far more than either tolerance.
            tol = 1e-4 if self.precision == "fp32" else 5e-2
            if got is not None and torch.allclose(
                got, want.to(got.dtype), rtol=tol, atol=tol * float(want.abs().max()) + 1e-6
            ):
                split.verified = True
            else:
                logger.debug(
                    "AblationCAM: the torch.fx tail after %s does not reproduce the model's scores; "
                    "falling back to the forward-hook path",
                    type(layer).__name__,
                )
                self._splits[id(layer)] = split = None
        if split is None:
            logger.debug("AblationCAM: %s: forward-hook path (whole model per batch)", type(layer).__name__)
            return lambda b_idx, new, layout: self.run_with_layer_output(layer, input_tensor[b_idx], new, layout)
        logger.debug("AblationCAM: %s: torch.fx split, running only the network after it", type(layer).__name__)

        def run(b_idx: torch.Tensor, new: torch.Tensor, layout: Optional[str]) -> Any:
            return self.run_tail(split, to_memory_format(new, layout), _crossing_rows(crossing, b_idx, n))

        return run

    def run_tail(self, split: TailSplit, new: torch.Tensor, crossing: List[Any]) -> Any:
        """The fx tail's outputs for the layer output ``new``, in float32 (no autocast: see ``unablated_scores``)."""
        return float32_outputs(split.tail(new, *crossing))

    def unablated_scores(self, ctx: LayerContext, run_unablated: Callable[[], Any]) -> torch.Tensor:
        """(B,) the scores y that the ablated y_k are compared with.

        The ablated copies are scored in fp32 whatever ``precision`` says (no autocast around their
        forwards): removing one channel moves a logit by less than bf16's step at that logit, so
        (y - y_k) / y would be rounding noise. When the capture pass ran at reduced precision, y is
        scored again in fp32 by ``run_unablated()`` (outputs of the whole batch), so y and y_k round alike.
        """
        original = ctx.target_scores.to(ctx.activations.device)
        if self.precision == "fp32":
            return original
        rows = torch.arange(original.shape[0], device=ctx.input_tensor.device)
        return self.score_rows(run_unablated(), ctx.targets, rows).to(original.dtype)

    def _closed_form_head(self, ctx: LayerContext, dim: int) -> Optional[nn.Linear]:
        """The linear head when the verified fx tail is pooling + linear and every target is a plain logit."""
        split = self._splits.get(id(ctx.layer))
        if split is None or not split.verified or dim != 1 or ctx.raw_activations.ndim != 4:
            return None
        if not all(type(t) is ClassifierOutputTarget for t in ctx.targets):
            return None
        return pooled_linear_head(split)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_ablation_layer_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._ablation_layer_lock = threading.Lock()

    def weights_with_ablation_layer(self, ctx: LayerContext) -> torch.Tensor:
        """pytorch-grad-cam's ablation: image by image, through ``self.ablation_layer``'s protocol.

        Each forward pass holds copies of one image; in copy j the ablation layer's output
        (channel ``indices[j]`` ablated its way) replaces the target layer's output.
        """
        layer_obj, activations = self.ablation_layer, ctx.activations
        b, c = activations.shape[:2]
        chunk = self.fixed_chunk_size() or 32  # "auto" does not apply: the layer object sets the pace
        x = ctx.input_tensor
        with self._ablation_layer_lock, torch.inference_mode():
            original = self.unablated_scores(ctx, lambda: self.run_with_layer_output(ctx.layer, x, lambda out: out))
            ablated = original[:, None].expand(b, c).clone()  # channels not ablated: no drop, weight 0
            try:
                for i in range(b):
                    picked = layer_obj.activations_to_be_ablated(
                        activations[i].detach().cpu().numpy(), self.ratio_channels_to_ablate
                    )
                    channels = np.asarray(picked, dtype=np.int64).reshape(-1)
                    for start in range(0, channels.size, chunk):
                        part = channels[start : start + chunk]
                        layer_obj.set_next_batch(
                            input_batch_index=i, activations=ctx.raw_activations, num_channels_to_ablate=part.size
                        )
                        layer_obj.indices = part
                        rows = x[i : i + 1].expand(part.size, *x.shape[1:])
                        outputs = self.run_with_layer_output(ctx.layer, rows, layer_obj)
                        image = torch.full((part.size,), i, dtype=torch.long, device=x.device)
                        scores = self.score_rows(outputs, ctx.targets, image).to(ablated.dtype)
                        ablated[i, torch.as_tensor(part, device=ablated.device)] = scores
            finally:
                layer_obj.activations = None  # the stacked copies: free them with the call
        return relative_drop(original, ablated)

    def layer_weights(self, ctx: LayerContext) -> torch.Tensor:
        if self.ablation_layer is not None:
            return self.weights_with_ablation_layer(ctx)
        raw, activations = ctx.raw_activations, ctx.activations
        if not torch.is_tensor(raw):
            raise ValueError(
                f"AblationCAM zeroes channels of one tensor, but target layer {self._layer_name(ctx.index)} returned "
                f"{describe_output(raw)}; pass ablation_layer=AblationLayerFasterRCNN() (from "
                "pytorch_cam.ablation_layer) for a torchvision detector's FPN backbone, or an ablation layer of your "
                "own with the same protocol"
            )
        dim = self.channel_dim(raw, ctx.index)
        b, c = activations.shape[:2]
        if raw.shape[dim] != c:
            raise ValueError(
                f"AblationCAM could not map the {c} channels of the reshaped activations to the "
                f"layer output {tuple(raw.shape)} (expected {c} along dim {dim})"
            )
        k = max(1, round(self.ratio_channels_to_ablate * c))
        keep = top_channels(activations, k, "max")
        with torch.inference_mode():
            run = self._tail_runner(ctx)
            everyone = torch.arange(b, device=raw.device)
            original = self.unablated_scores(ctx, lambda: run(everyone, raw.clone(), None))
            ablated = original[:, None].expand(b, c).clone()  # skipped channels: no drop, weight 0
            head = self._closed_form_head(ctx, dim)
            if head is not None:
                # Tail = global average pooling + flatten + linear: zeroing channel k lowers class c's logit by
                # exactly W[c, k] * mean(A_k), so no ablated copy needs to be built or run.
                cats = class_indices(ctx.targets, head.out_features, raw.device)
                drop = head.weight[cats].to(raw.dtype) * raw.mean(dim=tuple(range(2, raw.ndim)))
                ablated = torch.where(keep, original[:, None] - drop.to(ablated.dtype), ablated)
                return relative_drop(original, ablated)
            key = ("ablate", ctx.index, tuple(ctx.input_tensor.shape[1:]), ctx.input_tensor.dtype)
            pixels = math.prod(ctx.input_tensor.shape[2:])
            # The layout probed is that of the tensor fed to the model: the layer output for the fx tail,
            # the image for the hook path (whose input run_with_layer_output lays out).
            for b_idx, c_idx, layout in self.pair_chunks(keep, key, pixels, raw.ndim):
                new = raw[b_idx]  # advanced indexing already copies: a .clone() would copy every row twice
                new.movedim(dim, 1)[torch.arange(b_idx.numel(), device=new.device), c_idx] = 0
                scored = run(b_idx, new, layout)
                ablated[b_idx, c_idx] = self.score_rows(scored, ctx.targets, b_idx).to(ablated.dtype)
        return relative_drop(original, ablated)
