"""The methods registry: a method class names itself, nothing else lists it.

A class that passes ``name=`` when it is defined, e.g. ``class GradCAM(BaseCAM, name="gradcam")``,
is registered under that command-line name. Its public name is the class name, and whether it
scores batches of perturbed inputs (``batch_size``/``progress``) is its ``batched`` attribute.
``pytorch_cam`` imports every method module at import time, so a new method is one new file.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

#: command-line name -> class, in the order the modules were imported
REGISTRY: Dict[str, type] = {}


class Registered:
    """Mixin that registers subclasses defined with a ``name=`` class keyword."""

    #: the method's command-line name (None: abstract or not a method, e.g. a base class)
    cli_name: Optional[str] = None
    #: whether the method scores batches of perturbed inputs and accepts ``batch_size``/``progress``
    batched: bool = False

    def __init_subclass__(cls, name: Optional[str] = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass without its own name= (e.g. a user's tweak of GradCAM) is not a new CLI method.
        cls.cli_name = name
        if name is None:
            return
        other = REGISTRY.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"method name {name!r} is taken by {other.__module__}.{other.__qualname__}")
        REGISTRY[name] = cls
