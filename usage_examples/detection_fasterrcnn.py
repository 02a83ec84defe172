"""EigenCAM, Grad-CAM and Ablation-CAM for torchvision's Faster R-CNN, with no wrapper.

    python usage_examples/detection_fasterrcnn.py                      # offline: random weights (seeded)
    python usage_examples/detection_fasterrcnn.py --weights default    # COCO weights (downloaded once)
    python usage_examples/detection_fasterrcnn.py --methods eigencam --image-size 320

A detector returns one dict per image (``boxes``, ``labels``, ``scores``), not class scores, so:

* the target layer is the FPN backbone, ``model.backbone``, whose output is a dict of five
  feature maps; ``fasterrcnn_reshape_transform`` merges them into one (B, 5 * 256, h, w) map;
* ``FasterRCNNBoxScoreTarget(labels, boxes)`` scores the boxes to explain: for each, IoU + score
  of the best-matching detection of the same label (0 if none overlaps by more than 0.5);
* EigenCAM is class-agnostic and needs no target; Ablation-CAM ablates channels of the pyramid
  with ``AblationLayerFasterRCNN`` (``--ablation-ratio`` of them, see pytorch-grad-cam's recipe).

The detector takes [0, 1] pixels and normalises them itself. With random weights the boxes are
arbitrary; the script explains the most confident ones and prints how much of each map lies in
them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import cv2
import numpy as np
import torch
import torchvision

from pytorch_cam import AblationCAM, EigenCAM, GradCAM
from pytorch_cam.ablation_layer import AblationLayerFasterRCNN
from pytorch_cam.utils.image import load_image, show_cam_on_image
from pytorch_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from pytorch_cam.utils.reshape_transforms import fasterrcnn_reshape_transform

DEFAULT_IMAGE = Path(__file__).resolve().parents[1] / "pytorch_cam" / "data" / "chelsea.png"
DEFAULT_OUTPUT_DIR = Path("cam_output") / "detection"
METHODS = ("eigencam", "gradcam", "ablationcam")
# Fewer proposals than torchvision's defaults (1000 per image): the random-weight demo stays fast on a CPU.
LIGHT = {"rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 50, "box_detections_per_img": 20}


def build_model(weights: str, image_size: int) -> torch.nn.Module:
    """Faster R-CNN (ResNet-50 FPN) that works at ``image_size`` (no internal resizing with random weights)."""
    if weights == "none":
        torch.manual_seed(0)
        print("Faster R-CNN with random weights (seed 0): the boxes and maps show the pipeline, not a trained detector")
        model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=91, min_size=image_size, max_size=image_size, **LIGHT
        )
        # An untrained box head saturates its softmax (scores of exactly 1.0, whose gradient is 0) and
        # clamps its box deltas; small weights, as a trained head has, keep both differentiable.
        predictor = model.roi_heads.box_predictor
        for layer in (predictor.cls_score, predictor.bbox_pred):
            torch.nn.init.normal_(layer.weight, std=0.01)
            torch.nn.init.zeros_(layer.bias)
        return model
    try:
        return torchvision.models.detection.fasterrcnn_resnet50_fpn(weights="DEFAULT")
    except Exception as err:  # no network and nothing cached: one line, no traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SystemExit(
            f"error: could not load the pretrained weights ({first}); offline? run with --weights none"
        ) from None


def box_energy(cam: np.ndarray, boxes: np.ndarray) -> float:
    """The share of a map's total (H, W) that lies inside the union of ``boxes`` (N, 4)."""
    inside = np.zeros(cam.shape, bool)
    for x1, y1, x2, y2 in np.round(boxes).astype(int):
        inside[max(0, y1) : y2, max(0, x1) : x2] = True
    total = cam.sum()
    return float(cam[inside].sum() / total) if total > 0 else 0.0


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    for (x1, y1, x2, y2), label in zip(np.round(boxes).astype(int), labels):
        cv2.rectangle(image, (x1, y1), (x2, y2), (255, 255, 255), 1)
        cv2.putText(image, str(int(label)), (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 255), 1)
    return image


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-path", default=None, help=f"image to detect in (default: {DEFAULT_IMAGE.name})")
    p.add_argument("--weights", choices=["none", "default"], default="none", help="'none' (default): random, offline")
    p.add_argument("--image-size", type=int, default=224, help="side of the square input")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--max-boxes", type=int, default=3, help="explain the N most confident detections")
    p.add_argument("--ablation-ratio", type=float, default=0.01, help="share of the 1280 channels Ablation-CAM ablates")
    p.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR), help="where to write the PNGs")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def make_cam(method: str, model: torch.nn.Module, ratio: float) -> Any:
    layers = [model.backbone]  # its output: an OrderedDict of five FPN levels
    if method == "eigencam":
        return EigenCAM(model, layers, reshape_transform=fasterrcnn_reshape_transform)
    if method == "gradcam":
        return GradCAM(model, layers, reshape_transform=fasterrcnn_reshape_transform)
    return AblationCAM(
        model,
        layers,
        reshape_transform=fasterrcnn_reshape_transform,
        ablation_layer=AblationLayerFasterRCNN(),
        ratio_channels_to_ablate=ratio,
        progress=False,
    )


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the example; writes <method>.png per method.

    Returns {"maps": {method: (1, H, W)}, "boxes": (N, 4), "labels": (N,), "model", "input": (1, 3, H, W)}.
    """
    args = parse_args(argv)
    image = cv2.resize(
        load_image(args.image_path or str(DEFAULT_IMAGE)),
        (args.image_size, args.image_size),
        interpolation=cv2.INTER_AREA,
    )
    model = build_model(args.weights, args.image_size).to(args.device).eval()
    x = torch.from_numpy(image.transpose(2, 0, 1)).unsqueeze(0).to(args.device)  # [0, 1]: the model normalises

    with torch.no_grad():
        detections = model(x)[0]  # sorted by score
    boxes = detections["boxes"][: args.max_boxes].cpu()
    labels = detections["labels"][: args.max_boxes].cpu()
    if boxes.shape[0] == 0:
        raise SystemExit("error: the model detected nothing in this image; nothing to explain")
    print(f"explaining {boxes.shape[0]} detection(s): scores {[round(float(s), 3) for s in detections['scores'][:3]]}")
    # One target per image, here for several boxes at once.
    targets = [FasterRCNNBoxScoreTarget(labels=labels, bounding_boxes=boxes)]

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    maps = {}
    for method in args.methods:
        cam = make_cam(method, model, args.ablation_ratio)
        # EigenCAM ignores the targets; GradCAM and AblationCAM explain the boxes.
        maps[method] = cam(x, targets=None if method == "eigencam" else targets)
        overlay = draw_boxes(show_cam_on_image(image, maps[method][0]), boxes.numpy(), labels.numpy())
        cv2.imwrite(str(out_dir / f"{method}.png"), overlay)
        print(f"{method}: {box_energy(maps[method][0], boxes.numpy()):.1%} of the map inside the boxes")
    print(f"wrote {', '.join(f'{m}.png' for m in maps)} to {out_dir}")
    return {"maps": maps, "boxes": boxes.numpy(), "labels": labels.numpy(), "model": model, "input": x}


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as err:  # a missing --image-path: one line
        raise SystemExit(f"error: {err}") from None
