"""CAM: the original class activation map.

Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.
https://arxiv.org/abs/1512.04150

For a network whose classifier is global average pooling followed by a linear layer, the
class weights of that layer weight the channels of the last feature map:

    w_c = W_fc[k, c]            (k: the target class)
    L   = ReLU(sum_c w_c A_c)

Gradient-free: one forward pass, no backward. The classifier is found automatically as the last
``nn.Linear`` whose ``in_features`` equals the target layer's channel count; pass ``fc_layer`` to
choose it (a ``nn.Linear`` or a 1x1 convolution). Targets must carry a class index
(``ClassifierOutputTarget`` and its relatives, or plain ints).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM
from pytorch_cam.utils.model_targets import BinaryClassifierOutputTarget


def _classifier_matrix(layer: nn.Module) -> torch.Tensor:
    weight = getattr(layer, "weight", None)
    if not torch.is_tensor(weight) or weight.ndim < 2 or any(s != 1 for s in weight.shape[2:]):
        raise TypeError(
            f"fc_layer must be an nn.Linear or a 1x1 convolution with a weight of shape (classes, channels), "
            f"got {type(layer).__name__}"
        )
    return weight.detach().reshape(weight.shape[0], weight.shape[1])


class CAM(BaseCAM, name="cam"):
    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers,
        reshape_transform=None,
        fc_layer: Optional[nn.Module] = None,
        **kwargs,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform=reshape_transform, **kwargs)
        if fc_layer is not None:
            if not any(m is fc_layer for m in model.modules()):
                raise ValueError("fc_layer is not a submodule of the model; pass a module taken from it, e.g. model.fc")
            _classifier_matrix(fc_layer)
        self.fc_layer = fc_layer

    def _find_classifier(self, channels: int) -> nn.Module:
        if self.fc_layer is not None:
            return self.fc_layer
        found = [m for m in self.model.modules() if isinstance(m, nn.Linear) and m.in_features == channels]
        if not found:
            raise ValueError(
                f"CAM found no nn.Linear with in_features == {channels} (the target layer's channels); "
                "CAM needs a global-pooling + linear classifier on the target layer, or pass fc_layer=..."
            )
        return found[-1]

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> torch.Tensor:
        matrix = _classifier_matrix(self._find_classifier(activations.shape[1])).to(activations.device)
        if matrix.shape[1] != activations.shape[1]:
            raise ValueError(
                f"fc_layer takes {matrix.shape[1]} features but the target layer has {activations.shape[1]} "
                "channels; CAM needs the classifier that reads the pooled target layer"
            )
        rows = []
        for t in targets:
            category = getattr(t, "category", None)
            if isinstance(category, bool) or not isinstance(category, int):
                raise TypeError(
                    f"CAM weights channels by the classifier row of a class, so each target needs a class "
                    f"index (e.g. ClassifierOutputTarget(281) or an int); got {t!r}"
                )
            if isinstance(t, BinaryClassifierOutputTarget):
                rows.append(matrix[0] if category == 1 else -matrix[0])
                continue
            if not -matrix.shape[0] <= category < matrix.shape[0]:
                raise IndexError(
                    f"target class {category} is outside the classifier, which has {matrix.shape[0]} classes"
                )
            rows.append(matrix[category])
        return torch.stack(rows)
