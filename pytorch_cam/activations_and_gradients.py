"""pytorch-grad-cam's ``ActivationsAndGradients``: target-layer outputs and their gradients.

A CAM object fills one after every call (``cam.activations_and_grads``). Used on its own it
records the target layers' outputs of one forward pass and, once the caller runs a backward
pass, their gradients::

    record = ActivationsAndGradients(model, [model.layer4[-1]], reshape_transform=None)
    out = record(x)                 # forward; record.activations is filled
    out[:, 281].sum().backward()    # record.gradients is filled
    record.release()

Unlike pytorch-grad-cam's, it leaves no hook on the model between calls: forward hooks exist
only while ``record(x)`` runs, and gradients are caught by hooks on the captured tensors.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch
from torch import nn


class ActivationsAndGradients:
    """Target-layer activations and their gradients for one forward (and backward) pass.

    Args:
        model: the network.
        target_layers: the modules whose outputs are recorded, in order.
        reshape_transform: applied to every recorded activation and gradient (e.g. ViT tokens ->
            (B, C, H, W)); ``None`` keeps the layer's layout.
        detach: ``True`` stores detached CPU copies; ``False`` keeps the tensors on their device,
            attached to the graph.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Optional[Callable[..., torch.Tensor]],
        detach: bool = True,
    ) -> None:
        self.model = model
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self.detach = detach
        self.activations: List[torch.Tensor] = []
        self.gradients: List[torch.Tensor] = []
        self.handles: List[Any] = []

    def keep(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as this record stores it: a detached CPU copy when ``detach``."""
        return tensor.detach().cpu() if self.detach else tensor

    def _transformed(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.reshape_transform is None else self.reshape_transform(tensor)

    def save_activation(self, module: nn.Module, input: Any, output: Any) -> None:
        """Forward hook: record the layer's output (and catch its gradient when one flows back)."""
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        self.activations.append(self.keep(self._transformed(tensor)))
        self.save_gradient(module, input, output)

    def save_gradient(self, module: nn.Module, input: Any, output: Any) -> None:
        """Catch the gradient of the layer's output in the next backward pass (if it needs one)."""
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        if not (torch.is_tensor(tensor) and tensor.requires_grad):
            return

        def store(grad: torch.Tensor) -> None:
            # Backward visits the layers from last to first: prepend to keep the forward order.
            self.gradients.insert(0, self.keep(self._transformed(grad)))

        tensor.register_hook(store)

    def __call__(self, x: torch.Tensor) -> Any:
        self.activations = []
        self.gradients = []
        self.handles = [layer.register_forward_hook(self.save_activation) for layer in self.target_layers]
        try:
            return self.model(x)
        finally:
            self.release()

    def clear(self) -> None:
        """Forget the recorded tensors (and, for ``detach=False``, the graph they hold)."""
        self.activations = []
        self.gradients = []

    def release(self) -> None:
        """Remove any hook still registered (none is left after a call returns)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
