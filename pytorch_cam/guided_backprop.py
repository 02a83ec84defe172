"""Guided backpropagation.

Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR 2015 workshop.
https://arxiv.org/abs/1412.6806

The gradient of the target class score with respect to the input image, except that at every
ReLU the backward pass keeps only the positive gradients at positions where the ReLU's input was
positive:

    R_in = [x > 0] * [R_out > 0] * R_out

Plain backprop keeps ``[x > 0] * R_out``; the extra ``[R_out > 0]`` discards the signal of
features that decrease the score, which gives the sharp, edge-like pictures guided backprop is
known for. Multiplying such a picture by an upsampled CAM gives "Guided Grad-CAM".

How it is done here: while a call runs, a forward hook on every ``nn.ReLU`` module registers a
gradient hook on that ReLU's output which clamps the incoming gradient at zero; the ReLU's own
backward then applies ``[x > 0]``. The gradient hooks belong to that call's autograd graph and
die with it, the forward hooks are removed in ``finally``, the input gradient comes from
``torch.autograd.grad`` (parameters never get ``.grad``) and every module's training flag is
restored. In-place ReLUs (``nn.ReLU(inplace=True)``, as in torchvision's ResNets) are handled.

Limitation: only ``nn.ReLU`` *modules* are guided. A ReLU applied functionally inside a
``forward`` (``F.relu``, ``torch.relu``, ``x.relu()``) cannot be hooked and backpropagates the
ordinary way; if the model has no ``nn.ReLU`` module at all, a warning is logged and the result
is the plain input gradient.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Sequence, Union

import numpy as np
import torch
from torch import nn

from pytorch_cam.base_cam import model_device, resolve_device
from pytorch_cam.utils.model_state import eval_mode

logger = logging.getLogger("pytorch_cam")

__all__ = ["GuidedBackpropReLUModel"]


def _clamp_negative(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


def _guide_relu_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    if torch.is_tensor(output) and output.requires_grad:
        output.register_hook(_clamp_negative)


class GuidedBackpropReLUModel:
    """Guided backpropagation for a model built from ``nn.ReLU`` modules.

    Args:
        model: the network; it is evaluated in eval mode during a call and its modules' training
            flags are restored afterwards. It is never modified.
        device: optional check that the model lives where you expect (e.g. ``"cuda"``); the
            model is not moved.

    Call it as ``gb_model(input_img, target_category=None)`` with ``input_img`` of shape
    (1, C, H, W) to get a numpy float32 array (H, W, C). ``target_category=None`` explains the
    model's top class. A batch (B, C, H, W) with B > 1 gives (B, H, W, C); then
    ``target_category`` may be one int for all images or a sequence with one per image.
    """

    def __init__(self, model: nn.Module, device: Union[str, torch.device, None] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.device = resolve_device(device, model) if device is not None else model_device(model)

    def forward(self, input_img: torch.Tensor) -> torch.Tensor:
        return self.model(input_img)

    def __call__(
        self,
        input_img: torch.Tensor,
        target_category: Union[int, Sequence[int], None] = None,
    ) -> np.ndarray:
        x = self._check_input(input_img)
        relus = [m for m in self.model.modules() if isinstance(m, nn.ReLU)]
        if not relus:
            logger.warning(
                "GuidedBackpropReLUModel: the model has no nn.ReLU modules (functional relus "
                "cannot be hooked), so the result is the plain input gradient"
            )
        with eval_mode(self.model), torch.enable_grad(), self._guided(relus):
            x = x.requires_grad_(True)
            outputs = self.forward(x)
            if not torch.is_tensor(outputs) or outputs.ndim != 2:
                shape = tuple(outputs.shape) if torch.is_tensor(outputs) else type(outputs).__name__
                raise ValueError(
                    f"guided backprop needs a classifier output of shape (B, classes); this model returns {shape}"
                )
            categories = self._categories(target_category, outputs)
            scores = outputs.gather(1, categories[:, None])
            if not scores.requires_grad:
                raise RuntimeError(
                    "the class scores carry no gradient: the model's forward seems to run under "
                    "torch.no_grad() or torch.inference_mode(); guided backprop needs autograd"
                )
            (grad,) = torch.autograd.grad(scores.sum(), x)
        out = grad.detach().float().cpu().numpy().transpose(0, 2, 3, 1)
        return out[0] if out.shape[0] == 1 else out

    # ------------------------------------------------------------------ helpers
    def _check_input(self, input_img: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(input_img) or not input_img.is_floating_point():
            raise TypeError(
                "input_img must be a floating point torch.Tensor of shape (B, C, H, W); convert "
                "images with pytorch_cam.utils.image.preprocess_image"
            )
        if input_img.ndim != 4:
            hint = " Add the batch dimension with x.unsqueeze(0)." if input_img.ndim == 3 else ""
            raise ValueError(f"input_img must have shape (B, C, H, W), got {tuple(input_img.shape)}.{hint}")
        # A detached copy: the caller's tensor never gets requires_grad or .grad.
        return input_img.detach().to(self.device).clone()

    @staticmethod
    def _categories(target_category: Union[int, Sequence[int], None], outputs: torch.Tensor) -> torch.Tensor:
        b, n = outputs.shape
        if target_category is None:
            return outputs.detach().argmax(dim=1)
        if isinstance(target_category, (int, np.integer)) and not isinstance(target_category, bool):
            cats = [int(target_category)] * b
        else:
            cats = [int(c) for c in target_category]
            if len(cats) != b:
                raise ValueError(f"target_category has {len(cats)} entries but the batch has {b} images")
        bad = [c for c in cats if not 0 <= c < n]
        if bad:
            raise IndexError(
                f"target_category {bad[0]} is outside the model output, which has {n} classes (valid: 0..{n - 1})"
            )
        return torch.tensor(cats, device=outputs.device)

    @staticmethod
    @contextmanager
    def _guided(relus: Sequence[nn.Module]) -> Iterator[None]:
        handles = []
        try:
            for m in relus:
                handles.append(m.register_forward_hook(_guide_relu_output))
            yield
        finally:
            for h in handles:
                h.remove()

    def release(self) -> None:
        """Kept for API symmetry with the CAM classes: nothing stays attached between calls."""

    def __repr__(self) -> str:
        return f"GuidedBackpropReLUModel({type(self.model).__name__}, device={self.device})"
