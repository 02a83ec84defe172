"""pytorch-grad-cam's ablation layers, for ``AblationCAM(..., ablation_layer=...)``.

``AblationCAM`` needs none of these: by default it zeroes each channel of the target layer's output
exactly, as in the Ablation-CAM paper, and batches the ablated copies of several images and
channels together. Passing one of these layers gives pytorch-grad-cam's semantics instead, one
image at a time, which some recipes rely on:

- ``AblationLayer``: a channel is set to 0 when the layer's smallest activation is 0 (post-ReLU
  maps), otherwise to ``min(activations) - 1e7`` — so that a layer with negative values still
  switches the channel off after a following ReLU.
- ``AblationLayerVit``: the same for token layouts (B, N, C), whose channels are the last dim.
- ``AblationLayerFasterRCNN``: for a torchvision detector's FPN backbone (a dict of five 256-channel
  maps ``'0'..'3', 'pool'``); channel ``c`` of the merged map (see
  ``fasterrcnn_reshape_transform``) is channel ``c % 256`` of level ``c // 256``, set to -1000.

The protocol (what ``AblationCAM`` calls; a custom layer implements the same three methods):
``activations_to_be_ablated(activations, ratio)`` gives the channels of one image to ablate,
``set_next_batch(input_batch_index, activations, num_channels_to_ablate)`` stacks that many copies
of the image's layer output, ``indices`` is set to the channels of the copies, and calling the
layer returns the ablated copies, which replace the target layer's output for that forward pass
(through a hook during the call only: the model itself is never modified).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_cam.utils.svd_on_activations import get_2d_projection

#: how far below the smallest activation a channel is pushed when zero is not "off"
ABLATION_OFFSET = 1e7


def _ablate_(output: torch.Tensor, indices: Any) -> torch.Tensor:
    """Ablate channel ``indices[i]`` of copy ``i`` of ``output`` (channels on dim 1), in place."""
    count = output.shape[0]
    lowest = output.min()
    rows = torch.arange(count, device=output.device)
    if lowest == 0:
        value = torch.zeros(count, dtype=output.dtype, device=output.device)
    else:
        # pytorch-grad-cam ablates the copies one after the other, each below the minimum the previous
        # one left: copy i's channel ends at min - (i + 1) * offset.
        value = lowest - ABLATION_OFFSET * (rows + 1).to(output.dtype)
    channels = torch.as_tensor(np.asarray(indices[:count]), dtype=torch.long, device=output.device)
    target = output[rows, channels]  # (count, *spatial)
    output[rows, channels] = value.reshape(count, *([1] * (target.ndim - 1))).expand_as(target)
    return output


class AblationLayer(nn.Module):
    """Ablation with pytorch-grad-cam's semantics for (B, C, H, W) layer outputs (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.indices: Any = None
        self.activations: Any = None

    def objectiveness_mask_from_svd(self, activations: Any, threshold: float = 0.01) -> np.ndarray:
        """Boolean (H, W) mask of the positions where the activations' first principal component is not ~0."""
        projection = np.abs(get_2d_projection(np.asarray(activations)[None])[0])
        projection = projection - projection.min()
        top = projection.max()
        projection = projection / top if top > 0 else projection
        return projection > threshold

    def activations_to_be_ablated(self, activations: Any, ratio_channels_to_ablate: float = 1.0) -> np.ndarray:
        """The channels of one image's (C, H, W) activations to ablate, also kept in ``self.indices``.

        All of them for a ratio of 1. Otherwise (pytorch-grad-cam's experimental selection) each
        channel is scored by the share of its normalised magnitude inside the principal-component
        mask, and the ``ratio`` highest- and ``ratio`` lowest-scoring channels are ablated.
        """
        activations = np.asarray(activations)
        channels = activations.shape[0]
        if ratio_channels_to_ablate == 1.0:
            self.indices = np.arange(channels, dtype=np.int32)
            return self.indices
        mask = self.objectiveness_mask_from_svd(activations)
        magnitude = np.abs(activations.reshape(channels, -1)).astype(np.float64)
        magnitude = magnitude - magnitude.min(axis=1, keepdims=True)
        peak = magnitude.max(axis=1, keepdims=True)
        magnitude = magnitude / np.where(peak > 0, peak, 1)
        total = magnitude.sum(axis=1)
        inside = (magnitude * mask.reshape(1, -1)).sum(axis=1)
        scores = np.where(total > 0, inside / np.where(total > 0, total, 1), 0).astype(np.float32)
        order = np.argsort(scores)
        k = int(channels * ratio_channels_to_ablate)
        self.indices = np.concatenate([order[::-1][:k], order[:k]]).astype(np.int32)
        return self.indices

    def set_next_batch(self, input_batch_index: int, activations: Any, num_channels_to_ablate: int) -> None:
        """Stack ``num_channels_to_ablate`` copies of image ``input_batch_index``'s layer output."""
        one = activations[input_batch_index]
        self.activations = one.unsqueeze(0).repeat(num_channels_to_ablate, *([1] * one.ndim))

    def __call__(self, x: Any) -> Any:
        return _ablate_(self.activations, self.indices)


class AblationLayerVit(AblationLayer):
    """``AblationLayer`` for token layouts (B, N, C): the channels are the last dimension."""

    def __call__(self, x: Any) -> Any:
        moved = self.activations.movedim(-1, 1)  # a view: ablating it ablates the copies
        _ablate_(moved, self.indices)
        return self.activations


class AblationLayerFasterRCNN(AblationLayer):
    """``AblationLayer`` for a torchvision detector's FPN backbone output (a dict of 256-channel maps)."""

    levels = ("0", "1", "2", "3", "pool")
    channels_per_level = 256

    def set_next_batch(self, input_batch_index: int, activations: Any, num_channels_to_ablate: int) -> None:
        self.activations = OrderedDict(
            (key, value[input_batch_index].unsqueeze(0).repeat(num_channels_to_ablate, 1, 1, 1))
            for key, value in activations.items()
        )

    def __call__(self, x: Any) -> Any:
        result = self.activations
        count = result["pool"].shape[0]
        for i in range(count):
            level, channel = divmod(int(self.indices[i]), self.channels_per_level)
            result[self.levels[level]][i, channel] = -1000
        return result
