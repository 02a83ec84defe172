"""Grad-CAM for semantic segmentation (torchvision DeepLabV3 / FCN / LR-ASPP), with no wrapper.

    python usage_examples/segmentation.py                               # offline: random weights (seeded)
    python usage_examples/segmentation.py --weights default             # VOC-trained weights (downloaded once)
    python usage_examples/segmentation.py --arch lraspp_mobilenet_v3_large --image-size 160

torchvision's segmentation models return a dict, ``{"out": (B, classes, H, W)}`` (plus ``"aux"``
with an auxiliary head). pytorch_cam explains the ``"out"`` entry, so the model is passed as it
is; ``SemanticSegmentationTarget(category, mask)`` scores the sum of the category's logits over
the mask's pixels. Here the mask is where the model itself predicts the category: the map then
answers "which regions made the model segment this class here".
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional, Sequence

import cv2
import numpy as np
import torch
import torchvision

from pytorch_cam import GradCAM
from pytorch_cam.utils.image import load_image, preprocess_image, show_cam_on_image
from pytorch_cam.utils.model_targets import SemanticSegmentationTarget

DEFAULT_IMAGE = Path(__file__).resolve().parents[1] / "pytorch_cam" / "data" / "chelsea.png"
DEFAULT_OUTPUT_DIR = Path("cam_output") / "segmentation"
ARCHS = ("deeplabv3_resnet50", "fcn_resnet50", "lraspp_mobilenet_v3_large")
VOC_CLASSES = 21  # background + the 20 Pascal VOC classes (the pretrained weights' label set)
VOC_CAT = 8
# torchvision's segmentation models are trained on ImageNet-normalised inputs.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build_model(arch: str, weights: str) -> torch.nn.Module:
    builder = getattr(torchvision.models.segmentation, arch)
    if weights == "none":
        torch.manual_seed(0)
        print(f"{arch} with random weights (seed 0): the map shows the pipeline, not what a trained model sees")
        return builder(weights=None, weights_backbone=None, num_classes=VOC_CLASSES)
    try:
        return builder(weights="DEFAULT")
    except Exception as err:  # no network and nothing cached: one line, no traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SystemExit(
            f"error: could not load the pretrained weights ({first}); offline? run with --weights none"
        ) from None


def target_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The backbone's last stage: ``backbone.layer4`` for the ResNet models, the last block for MobileNet."""
    return list(model.backbone.children())[-1]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-path", default=None, help=f"image to segment (default: {DEFAULT_IMAGE.name})")
    p.add_argument("--arch", choices=ARCHS, default="deeplabv3_resnet50")
    p.add_argument("--weights", choices=["none", "default"], default="none", help="'none' (default): random, offline")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument(
        "--category", type=int, default=None, help=f"class to explain (default: the cat, {VOC_CAT}, if predicted)"
    )
    p.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR), help="where to write the PNGs")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """Run the example; writes gradcam.png and mask.png, returns {"maps", "mask", "category"}."""
    args = parse_args(argv)
    image = cv2.resize(
        load_image(args.image_path or str(DEFAULT_IMAGE)),
        (args.image_size, args.image_size),
        interpolation=cv2.INTER_AREA,
    )
    model = build_model(args.arch, args.weights).to(args.device).eval()
    x = preprocess_image(image, mean=IMAGENET_MEAN, std=IMAGENET_STD).to(args.device)

    with torch.no_grad():
        predicted = model(x)["out"][0].argmax(dim=0).cpu().numpy()  # (H, W) class per pixel
    present = np.bincount(predicted.reshape(-1), minlength=VOC_CLASSES)
    if args.category is not None:
        category = args.category
    else:  # the cat if the model finds one, else the largest predicted class
        category = VOC_CAT if present[VOC_CAT] > 0 else int(present.argmax())
    mask = np.float32(predicted == category)
    print(f"explaining class {category}: predicted on {mask.mean():.0%} of the pixels")

    # No wrapper: the {"out": ...} dict is understood, and the target gets each image's (classes, H, W) logits.
    targets = [SemanticSegmentationTarget(category, mask)]
    with GradCAM(model, target_layers=[target_layer(model)]) as cam:
        maps = cam(x, targets=targets)

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_dir / "gradcam.png"), show_cam_on_image(image, maps[0]))
    cv2.imwrite(str(out_dir / "mask.png"), show_cam_on_image(image, mask, colormap=cv2.COLORMAP_BONE))
    print(f"wrote gradcam.png and mask.png to {out_dir}")
    return {"maps": maps, "mask": mask, "category": category}


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as err:  # a missing --image-path: one line
        raise SystemExit(f"error: {err}") from None
