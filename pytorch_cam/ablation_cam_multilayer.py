"""Multi-layer Ablation-CAM: ablate a channel in every target layer at once.

After Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network via
Gradient-free Localization", WACV 2020, as pytorch-grad-cam's ``ablation_cam_multilayer`` intends
it (its 1.5.7 version raises TypeError on every call). The target layers must have the same
number of channels C. Channel k is set to zero in all of them in the same forward pass; the
relative drop of the target score weights channel k in every layer's map:

    w_k = (y - y_k) / y         (y: original score, y_k: score with channel k zeroed in every layer)
    L_l = ReLU(sum_k w_k A_k^l)   for each target layer l;  L = mean_l of the scaled L_l

The weights are computed once per call, in batched chunks of (image, channel) pairs, each ablated
copy running the whole network (forward hooks replace the layers' outputs for the duration of the
chunk). ``ratio_channels_to_ablate < 1`` ablates only the channels with the largest maximum
activation in the *first* target layer; the others get weight 0. Channels are dimension 1 of a
layer's output, or its last dimension when a reshape transform is in use (token layouts keep
channels last). With one target layer the map is Ablation-CAM's.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from torch import nn

from pytorch_cam.base_cam import CallState, LayerContext
from pytorch_cam.perturbation import DEFAULT_BATCH_SIZE, PerturbationCAM, check_ratio, relative_drop, top_channels
from pytorch_cam.utils.find_layers import replace_layer_recursive  # noqa: F401 (pytorch-grad-cam has it here)


class MultiLayerAblationCAM(PerturbationCAM, name="ablationcam_multilayer"):
    """Ablation-CAM whose channel k is ablated in all target layers at once (they must share C).

    Args (besides ``PerturbationCAM``'s):
        ratio_channels_to_ablate: fraction of the channels to ablate, per image; the ones with the
            largest maximum activation in the *first* target layer are chosen (one ranking, since a
            channel is ablated in every layer together), the others get weight 0.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[Sequence[nn.Module], nn.Module, None],
        reshape_transform: Optional[Callable[..., torch.Tensor]] = None,
        batch_size: Union[int, str] = DEFAULT_BATCH_SIZE,
        ratio_channels_to_ablate: float = 1.0,
        progress: bool = True,
        device: Union[str, torch.device, None] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform=reshape_transform,
            batch_size=batch_size,
            progress=progress,
            device=device,
            **kwargs,
        )
        self.ratio_channels_to_ablate = check_ratio(ratio_channels_to_ablate)

    def layer_weights(self, ctx: LayerContext) -> torch.Tensor:
        # One set of weights serves every layer: computed on the first layer's turn, then reused.
        if "multilayer_weights" not in ctx.call.cache:
            ctx.call.cache["multilayer_weights"] = self.ablation_weights(ctx.call)
        return ctx.call.cache["multilayer_weights"]

    def ablation_weights(self, call: CallState) -> torch.Tensor:
        """(B, C) relative score drops, channel k ablated in every target layer at once."""
        contexts = [self.layer_context(call, i) for i in range(len(self.layers))]
        counts = [c.activations.shape[1] for c in contexts]
        if len(set(counts)) > 1:
            listing = ", ".join(f"{self._layer_name(i)}: {n}" for i, n in enumerate(counts))
            raise ValueError(
                f"multi-layer Ablation-CAM ablates channel k in every target layer at once, so the layers need the "
                f"same number of channels; got {listing}. Choose layers of one width, or use AblationCAM per layer"
            )
        dims = [self.channel_dim(c.raw_activations, c.index) for c in contexts]
        for ctx, dim in zip(contexts, dims):
            raw = ctx.raw_activations
            if raw.shape[dim] != counts[0]:
                # The hooks zero the raw output along ``dim``; another width there would ablate the wrong thing.
                raise ValueError(
                    f"multi-layer Ablation-CAM could not map the {counts[0]} channels of target layer "
                    f"{self._layer_name(ctx.index)}'s reshaped activations to its output {tuple(raw.shape)} "
                    f"(expected {counts[0]} along dim {dim}); the reshape_transform must keep channels last"
                )
        first = contexts[0].activations
        b, c = first.shape[:2]
        keep = top_channels(first, max(1, round(self.ratio_channels_to_ablate * c)), "max")
        original = call.target_scores.to(first.device)
        ablated = original[:, None].expand(b, c).clone()  # skipped channels: no drop, weight 0
        x = call.input_tensor
        with torch.inference_mode():
            key = ("ablate-multilayer", tuple(x.shape[1:]), x.dtype)
            for b_idx, c_idx, layout in self.pair_chunks(keep, key, math.prod(x.shape[2:]), x.ndim):
                outputs = self.run_ablated(x[b_idx], c_idx, dims, layout)
                ablated[b_idx, c_idx] = self.score_rows(outputs, call.targets, b_idx).to(ablated.dtype)
        return relative_drop(original, ablated)

    def run_ablated(
        self, rows: torch.Tensor, channels: torch.Tensor, dims: List[int], memory_format: Optional[str] = None
    ) -> Any:
        """Model outputs for ``rows`` with, in row j, channel ``channels[j]`` zeroed in every target layer."""
        ran = [0] * len(self.layers)
        picks = torch.arange(rows.shape[0], device=rows.device)

        def make_hook(i: int):
            def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
                ran[i] += 1
                tensor = output[0] if isinstance(output, (tuple, list)) else output
                new = tensor.clone()
                new.movedim(dims[i], 1)[picks, channels] = 0
                if isinstance(output, tuple):
                    return (new, *output[1:])
                if isinstance(output, list):
                    return [new, *output[1:]]
                return new

            return hook

        handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(self.layers)]
        try:
            outputs = self.run_model(rows, memory_format)
        finally:
            for h in handles:
                h.remove()
        if not all(ran):
            raise RuntimeError(
                "multi-layer Ablation-CAM could not ablate every target layer: the model's forward ran without "
                "calling some layers' hooks (a compiled or scripted model ignores hooks added after compilation); "
                "pass the uncompiled model"
            )
        return outputs


#: pytorch-grad-cam's name in this module (the top-level ``pytorch_cam.AblationCAM`` is the single-layer one)
AblationCAM = MultiLayerAblationCAM
