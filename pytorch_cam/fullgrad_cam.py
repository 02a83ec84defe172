"""pytorch-grad-cam's module path for FullGrad (``pytorch_grad_cam.fullgrad_cam``).

The implementation is ``pytorch_cam.fullgrad``; this module only re-exports it, so that
``from pytorch_cam.fullgrad_cam import FullGrad`` works as the peer's import does.
"""

from pytorch_cam.fullgrad import FullGrad

__all__ = ["FullGrad"]
