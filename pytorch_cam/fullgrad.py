"""FullGrad.

Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization",
NeurIPS 2019. https://arxiv.org/abs/1905.00780

The output decomposes into input-gradients and bias-gradients of every layer. The saliency
map sums the absolute input-gradient ⊙ input and, for every convolution / batch-norm layer l
with a bias b_l, the absolute bias-gradient ⊙ bias of its output,

    S = sum_k psi(|dy/dx ⊙ x|_k) + sum_l sum_c psi(|dy/dz_l,c ⊙ b_l,c|)

where psi min-max scales one channel map to [0, 1] and upsamples it to the input size. For
batch norm the effective bias is beta - running_mean * gamma / sqrt(running_var + eps).

``target_layers`` is ignored (pass ``[]``): the layers are all Conv/BatchNorm (2-D or 3-D)
modules with a bias. Since bilinear upsampling is linear, each layer's normalised channels are
summed at their own resolution and upsampled once.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM, CallState, LayerContext, first_principal_component, min_max_scale, resize_maps

logger = logging.getLogger("pytorch_cam")

_BIAS_LAYERS = (nn.Conv2d, nn.Conv3d, nn.BatchNorm2d, nn.BatchNorm3d)


def bias_layers(model: nn.Module) -> list:
    """The Conv/BatchNorm modules of ``model`` that add a bias, in module order."""
    return [m for m in model.modules() if type(m) in _BIAS_LAYERS and getattr(m, "bias", None) is not None]


def effective_bias(layer: nn.Module) -> torch.Tensor:
    """The constant a layer adds per channel (batch norm folds its running statistics in)."""
    if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps) if layer.affine else 1.0
        return (layer.bias - layer.running_mean * scale).detach()
    return layer.bias.detach()


def _channel_scale(x: torch.Tensor) -> torch.Tensor:
    """Min-max scale every (image, channel) map of (B, C, *S) to [0, 1]."""
    b, c = x.shape[:2]
    return min_max_scale(x.reshape(b * c, *x.shape[2:])).reshape(x.shape)


class FullGrad(BaseCAM, name="fullgrad"):
    def __init__(self, model: nn.Module, target_layers=(), reshape_transform=None, **kwargs) -> None:
        if target_layers is not None and len(list(target_layers)) > 0:
            logger.warning("FullGrad ignores target_layers: it uses every Conv/BatchNorm layer that has a bias")
        layers = bias_layers(model)
        if not layers:
            raise ValueError(
                "FullGrad found no Conv2d/Conv3d/BatchNorm2d/BatchNorm3d layer with a bias in the model; "
                "it needs bias terms to attribute (use e.g. GradCAM instead)"
            )
        if reshape_transform is not None:
            raise ValueError("FullGrad explains convolutional layers only; drop reshape_transform")
        super().__init__(model, layers, compute_input_gradient=True, **kwargs)

    def get_bias_data(self, layer: nn.Module) -> torch.Tensor:
        """The bias ``layer`` adds to its output (batch norm: its effective bias in eval mode)."""
        return effective_bias(layer)

    @property
    def bias_data(self) -> list:
        """The effective bias of every bias layer, in module order."""
        return [effective_bias(layer) for layer in self.layers]

    def layer_weighted_activations(self, ctx: LayerContext) -> torch.Tensor:
        grads = ctx.grads
        bias = effective_bias(ctx.layer).to(grads.device, grads.dtype)
        return (grads * bias.reshape(1, -1, *([1] * (grads.ndim - 2)))).abs()

    def combine_layers(self, call: CallState, eigen_smooth: bool) -> torch.Tensor:
        x = call.input_tensor
        size = x.shape[2:]
        # One map per input channel, then one per bias layer (its normalised channels summed).
        maps = list(_channel_scale((call.input_gradient * x).abs().float()).unbind(1))
        with torch.no_grad():
            for i in range(len(self.layers)):
                ctx = self.layer_context(call, i)
                per_channel = _channel_scale(self.layer_weighted_activations(ctx).float())
                maps.append(resize_maps(per_channel.sum(dim=1), size))
        stacked = torch.stack(maps, dim=1)
        if eigen_smooth:
            return torch.relu(first_principal_component(stacked))
        return stacked.sum(dim=1)
