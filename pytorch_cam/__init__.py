"""pytorch_cam: class activation maps for PyTorch vision models."""

from pytorch_cam.ablation_cam import AblationCAM
from pytorch_cam.base_cam import BaseCAM
from pytorch_cam.cam import CAM
from pytorch_cam.eigen_cam import EigenCAM
from pytorch_cam.eigen_grad_cam import EigenGradCAM
from pytorch_cam.fullgrad import FullGrad
from pytorch_cam.grad_cam import GradCAM
from pytorch_cam.grad_cam_elementwise import GradCAMElementWise
from pytorch_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_cam.hirescam import HiResCAM
from pytorch_cam.iscam import ISCAM
from pytorch_cam.layer_cam import LayerCAM
from pytorch_cam.random_cam import RandomCAM
from pytorch_cam.score_cam import ScoreCAM
from pytorch_cam.smooth_grad_cam_pp import SmoothGradCAMpp
from pytorch_cam.sscam import SSCAM
from pytorch_cam.xgrad_cam import XGradCAM

__version__ = "0.1.0"

__all__ = [
    "AblationCAM",
    "BaseCAM",
    "CAM",
    "EigenCAM",
    "EigenGradCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackpropReLUModel",
    "HiResCAM",
    "ISCAM",
    "LayerCAM",
    "RandomCAM",
    "SSCAM",
    "ScoreCAM",
    "SmoothGradCAMpp",
    "XGradCAM",
]
