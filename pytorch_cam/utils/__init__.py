"""Utilities: images, targets, reshape transforms, layer finding (pytorch-grad-cam's ``utils`` package).

``deprocess_image`` and ``get_2d_projection`` are re-exported lazily: ``base_cam`` imports from this
package, and ``svd_on_activations`` imports from ``base_cam``.
"""

from typing import Any

_LAZY = {
    "deprocess_image": "pytorch_cam.utils.image",
    "get_2d_projection": "pytorch_cam.utils.svd_on_activations",
    "model_targets": None,
    "reshape_transforms": None,
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _LAZY[name]
    if module is None:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(module), name)
