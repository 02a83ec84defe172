"""pytorch_cam: class activation maps for PyTorch vision models.

Every method module of the package is imported here and its classes are exported under their
own names: a method registers itself with ``name=`` in its class statement (see
``pytorch_cam.registry``), so adding a method is adding its file.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from pytorch_cam.ablation_layer import AblationLayer, AblationLayerFasterRCNN, AblationLayerVit  # noqa: F401
from pytorch_cam.activations_and_gradients import ActivationsAndGradients  # noqa: F401
from pytorch_cam.base_cam import BaseCAM, LayerContext  # noqa: F401
from pytorch_cam.feature_factorization import DeepFeatureFactorization, run_dff_on_image  # noqa: F401
from pytorch_cam.guided_backprop import GuidedBackpropReLUModel  # noqa: F401
from pytorch_cam.perturbation import PerturbationCAM  # noqa: F401
from pytorch_cam.registry import REGISTRY as _REGISTRY

# Not methods: the CLI and the dataset runner would only slow the import down;
# `methods` reads the finished registry.
_NOT_METHODS = {"cli", "explain", "methods", "__main__"}

for _module in _pkgutil.iter_modules(__path__):
    if not _module.ispkg and _module.name not in _NOT_METHODS and not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")

globals().update({_cls.__name__: _cls for _cls in _REGISTRY.values()})

__version__ = "0.1.0"

__all__ = sorted(
    {
        "AblationLayer",
        "AblationLayerFasterRCNN",
        "AblationLayerVit",
        "ActivationsAndGradients",
        "BaseCAM",
        "DeepFeatureFactorization",
        "GuidedBackpropReLUModel",
        "LayerContext",
        "PerturbationCAM",
        "run_dff_on_image",
    }
    | {_cls.__name__ for _cls in _REGISTRY.values()}
)
