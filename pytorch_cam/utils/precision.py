"""Reduced precision and memory formats for the forwards a CAM or a metric runs.

``precision`` is one of ``"fp32"`` (the default: exact), ``"bf16"`` or ``"fp16"``. The reduced
ones run the model under ``torch.autocast`` for the call only: the user's parameters, their dtype
and memory format stay as they are, and nothing outside the calling thread sees a setting change
(autocast state is thread-local). Maps and metric values are always returned as float32.

``memory_format`` is ``"auto"``, ``"contiguous"`` or ``"channels_last"``: the layout of the
*inputs* of scoring forwards. A convolution given a channels-last input computes in channels-last
(often faster on CPUs with oneDNN and on tensor-core GPUs) with the model's weights untouched; the
result equals the contiguous one up to float rounding.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional, Union

import torch

#: the values ``precision=`` accepts, and the autocast dtype of each (None: no autocast)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}

#: the values ``memory_format=`` accepts
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


def check_precision(precision: Union[str, torch.dtype, None]) -> str:
    """The canonical name (``"fp32"``, ``"bf16"``, ``"fp16"``) of ``precision``, or a ValueError naming the choices."""
    if precision is None:
        return "fp32"
    if isinstance(precision, torch.dtype):
        if precision in _DTYPE_NAMES:
            return _DTYPE_NAMES[precision]
    elif isinstance(precision, str):
        name = _ALIASES.get(precision.lower(), precision.lower())
        if name in PRECISIONS:
            return name
    raise ValueError(
        f"precision must be 'fp32' (exact, the default), 'bf16' or 'fp16', got {precision!r}; "
        "bf16 is the fast choice on recent CPUs and GPUs, fp16 on older GPUs"
    )


def check_memory_format(memory_format: str) -> str:
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {', '.join(map(repr, MEMORY_FORMATS))}, got {memory_format!r}")
    return memory_format


def autocast(device: Union[torch.device, str], precision: str) -> ContextManager[Any]:
    """``torch.autocast`` for ``precision`` on ``device``'s type; a no-op context for fp32."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=dtype)


def to_memory_format(x: torch.Tensor, memory_format: Optional[str]) -> torch.Tensor:
    """``x`` laid out channels-last when asked and possible (4-D or 5-D), else unchanged."""
    if memory_format != "channels_last" or not torch.is_tensor(x):
        return x
    if x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def as_float32(x: Any) -> Any:
    """Floating tensors of a reduced-precision forward's result, cast to float32 (other values as they are)."""
    if torch.is_tensor(x):
        return x.float() if x.is_floating_point() and x.dtype != torch.float32 and x.dtype != torch.float64 else x
    return x


def float32_outputs(outputs: Any) -> Any:
    """``outputs`` with every reduced-precision floating tensor cast to float32, in tensors, dicts, lists and tuples.

    Model outputs such as HuggingFace's ``ModelOutput`` (a dict subclass) keep their type.
    """
    if torch.is_tensor(outputs):
        return as_float32(outputs)
    if isinstance(outputs, dict):
        converted = {k: float32_outputs(v) for k, v in outputs.items()}
        if type(outputs) is dict:
            return converted
        try:
            return type(outputs)(**converted)
        except TypeError:
            return converted
    if isinstance(outputs, list):
        return [float32_outputs(v) for v in outputs]
    if isinstance(outputs, tuple):
        items = [float32_outputs(v) for v in outputs]
        return type(outputs)(*items) if hasattr(outputs, "_fields") else tuple(items)
    return outputs
