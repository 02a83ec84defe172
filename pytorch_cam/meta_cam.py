"""The base of the meta-methods, which run another CAM method (FinerCAM, RefineCAM, SESS).

A meta-method holds one ``base_cam`` (an instance of a pytorch_cam method, or of a variant of it)
and presents its settings, so code that inspects a CAM object (the command line, a user's script)
sees the same attributes as on any method. Subclasses set ``self.base_cam`` in ``__init__`` (after
``check_base_method``) and define ``forward``.
"""

from __future__ import annotations

from typing import Any, List, Optional

import numpy as np
import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM, Inferred
from pytorch_cam.registry import Registered


def check_base_method(base_method: Any) -> type:
    """``base_method`` if it is a CAM class of this package, else a clear error."""
    if not (isinstance(base_method, type) and issubclass(base_method, BaseCAM)):
        raise TypeError(
            f"base_method must be a CAM class of pytorch_cam (a BaseCAM subclass such as GradCAM), got {base_method!r}"
        )
    return base_method


class MetaCAM(Registered):
    """A CAM method built on a base CAM object ``self.base_cam``; its settings are the base CAM's."""

    base_cam: BaseCAM
    base_method: type

    @property
    def model(self) -> nn.Module:
        return self.base_cam.model

    @property
    def target_layers(self) -> Optional[list]:
        return self.base_cam.target_layers

    @property
    def layers(self) -> List[nn.Module]:
        return self.base_cam.layers

    @property
    def inferred(self) -> Inferred:
        return self.base_cam.inferred

    @property
    def reshape_transform(self) -> Any:
        return self.base_cam.reshape_transform

    @property
    def device(self) -> torch.device:
        return self.base_cam.device

    @property
    def uses_gradients(self) -> bool:
        return self.base_cam.uses_gradients

    @property
    def compute_input_gradient(self) -> bool:
        return self.base_cam.compute_input_gradient

    @property
    def detach(self) -> bool:
        return self.base_cam.detach

    @property
    def precision(self) -> str:
        return self.base_cam.precision

    @property
    def outputs(self) -> Any:
        """The model's outputs in this thread's last call of the base CAM."""
        return self.base_cam.outputs

    @property
    def activations_and_grads(self) -> Any:
        return self.base_cam.activations_and_grads

    def forward(self, input_tensor: torch.Tensor, *args: Any, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.forward(*args, **kwargs)

    def release(self) -> None:
        self.base_cam.release()

    def __enter__(self) -> MetaCAM:
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> None:
        # Never return True: an exception raised inside ``with`` always propagates.
        self.release()
