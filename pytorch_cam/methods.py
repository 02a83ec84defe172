"""Registry of CAM methods by their command-line name (used by cam.py and the benchmarks)."""

from __future__ import annotations

from typing import Dict, Type

from pytorch_cam.ablation_cam import AblationCAM
from pytorch_cam.base_cam import BaseCAM
from pytorch_cam.cam import CAM
from pytorch_cam.eigen_cam import EigenCAM
from pytorch_cam.eigen_grad_cam import EigenGradCAM
from pytorch_cam.fullgrad import FullGrad
from pytorch_cam.grad_cam import GradCAM
from pytorch_cam.grad_cam_elementwise import GradCAMElementWise
from pytorch_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_cam.hirescam import HiResCAM
from pytorch_cam.iscam import ISCAM
from pytorch_cam.layer_cam import LayerCAM
from pytorch_cam.random_cam import RandomCAM
from pytorch_cam.score_cam import ScoreCAM
from pytorch_cam.smooth_grad_cam_pp import SmoothGradCAMpp
from pytorch_cam.sscam import SSCAM
from pytorch_cam.xgrad_cam import XGradCAM

#: name on the command line -> class. Every method of the package is listed here.
METHODS: Dict[str, Type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigengradcam": EigenGradCAM,
    "gradcamelementwise": GradCAMElementWise,
    "fullgrad": FullGrad,
    "cam": CAM,
    "sscam": SSCAM,
    "iscam": ISCAM,
    "smoothgradcampp": SmoothGradCAMpp,
    "randomcam": RandomCAM,
}

#: methods that score batches of perturbed inputs and so accept batch_size/progress
BATCHED = {"scorecam", "ablationcam", "sscam", "iscam"}
