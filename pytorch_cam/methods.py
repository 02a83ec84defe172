"""The CAM methods by command-line name (used by cam.py, the examples and the benchmarks).

Built from the registry: every method class names itself (``class GradCAM(BaseCAM, name="gradcam")``)
and ``import pytorch_cam`` imports every method module, so nothing here is kept by hand.
"""

from __future__ import annotations

from typing import Dict, Set

import pytorch_cam  # noqa: F401  (imports and so registers every method)
from pytorch_cam.registry import REGISTRY

#: name on the command line -> class, sorted by name
METHODS: Dict[str, type] = dict(sorted(REGISTRY.items()))

#: methods that score batches of perturbed inputs and so accept batch_size/progress
BATCHED: Set[str] = {name for name, cls in METHODS.items() if cls.batched}
