"""ShapleyCAM.

Cai et al., "CAMs as Shapley Value-based Explainers", 2025. https://arxiv.org/abs/2501.06261

The target score y is expanded to second order around the layer's activations A, with g = dy/dA
and H the Hessian of y w.r.t. A. Taking the zero activation as the baseline, the Shapley value of
every activation entry in that quadratic game is A ⊙ (g - H·A / 2): the linear part of the
expansion is credited entirely to its entry, the pairwise interactions are split in halves.
ShapleyCAM averages the bracket over positions, like Grad-CAM averages the gradient:

    w_c = mean_{i,j} (dy/dA - 1/2 H·A)_c[i, j]
    L   = ReLU(sum_c w_c A_c)

H·A is one Hessian-vector product (a second backward pass through the graph of g, with the
vector A). A network that is piecewise linear between the layer and the score (ReLU, pooling,
linear layers, eval-mode BatchNorm) has H = 0 and ShapleyCAM equals Grad-CAM; a curved score such
as ``ClassifierOutputReST`` (logit plus log-softmax, the paper's choice) makes the term count.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM, LayerContext


def hessian_vector_product(ctx: LayerContext) -> Optional[torch.Tensor]:
    """H·A in the (B, C, *S) layout for one layer, or ``None`` when the Hessian is zero.

    Needs a method with ``create_graph = True``: ``ctx.raw_grads`` must still be attached to the
    graph. ``None`` means the gradient does not depend on the activations at all (a score linear
    in them, or a model whose weights require no gradient and a piecewise-linear tail).
    """
    grads, acts = ctx.raw_grads, ctx.raw_activations
    if grads is None or not grads.requires_grad or not torch.is_tensor(acts) or not acts.requires_grad:
        return None
    try:
        with torch.enable_grad():
            # retain_graph: the next target layer's product may run through the same part of the graph;
            # it is freed with the call's state when the call returns.
            (hvp,) = torch.autograd.grad(grads, acts, grad_outputs=acts.detach(), retain_graph=True, allow_unused=True)
    except RuntimeError as err:
        if "derivative for" not in str(err) or "not implemented" not in str(err):
            raise
        # Fused kernels (e.g. scaled_dot_product_attention's flash/efficient attention) have no
        # second derivative. Switching kernels is process-wide, so it is the caller's choice, not ours.
        raise RuntimeError(
            "ShapleyCAM needs second derivatives, but an operation after the target layer has none in PyTorch "
            f"({str(err).splitlines()[0]}). For attention models, run the call inside "
            "`with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):` (note: that setting is "
            "process-wide), or use GradCAM, whose weights ShapleyCAM corrects"
        ) from err
    if hvp is None:
        return None
    return ctx.reshape(hvp)


class ShapleyCAM(BaseCAM, name="shapleycam"):
    """Grad-CAM weights corrected by the Hessian-vector product (see the module docstring).

    Takes ``BaseCAM``'s arguments; the gradients are computed with ``create_graph=True`` for the
    second backward pass and dropped with the rest of the call's graph when the call returns.
    """

    create_graph = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[Sequence[nn.Module], nn.Module, None] = None,
        reshape_transform: Optional[Callable[..., torch.Tensor]] = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("uses_gradients", True) is False:
            raise ValueError("ShapleyCAM needs gradients (and their Hessian); do not pass uses_gradients=False")
        super().__init__(model, target_layers, reshape_transform=reshape_transform, **kwargs)

    def layer_weights(self, ctx: LayerContext) -> torch.Tensor:
        hvp = hessian_vector_product(ctx)
        grads = ctx.grads.detach()
        values = grads if hvp is None else grads - 0.5 * hvp.to(grads.dtype)
        return values.mean(dim=tuple(range(2, values.ndim)))
