"""Grad-CAM for a Vision Transformer (torchvision ``vit_b_16``) — no reshape_transform needed.

    python usage_examples/vit_example.py                      # ImageNet weights (downloaded once)
    python usage_examples/vit_example.py --weights none       # offline, random weights
    python usage_examples/vit_example.py --method scorecam --output cam_output/vit_scorecam.png

The target layer is the last encoder block's first LayerNorm. Its output is tokens (B, 197, 768);
pytorch_cam drops the class token and folds the other 196 into the 14x14 patch grid by itself
(run with --verbose to see what was inferred).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
import torchvision

from pytorch_cam.methods import BATCHED, METHODS
from pytorch_cam.utils.image import load_image, preprocess_image, show_cam_on_image
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

DEFAULT_IMAGE = Path(__file__).resolve().parent / "images" / "chelsea.png"


def load_rgb(path: Optional[str], size: int) -> np.ndarray:
    """Float RGB image in [0, 1], resized to size x size; the bundled photo by default."""
    if path is not None:
        image = load_image(path)
    elif DEFAULT_IMAGE.exists():
        image = load_image(str(DEFAULT_IMAGE))
    else:  # the same cat, from scikit-image's bundled data
        from skimage import data

        image = np.float32(data.chelsea()) / 255.0
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def build_model(weights: str, image_size: int) -> torch.nn.Module:
    if weights == "none":
        torch.manual_seed(0)
        print("using random weights (--weights none): the map shows the pipeline, not what a trained ViT sees")
        model = torchvision.models.vit_b_16(weights=None, image_size=image_size)
        # torchvision zero-initialises the head, so every gradient (and Grad-CAM map) would be zero
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
        return model
    if image_size != 224:
        raise SystemExit("the pretrained vit_b_16 only accepts 224x224 inputs; drop --image-size or use --weights none")
    try:
        return torchvision.models.vit_b_16(weights=torchvision.models.ViT_B_16_Weights.DEFAULT)
    except Exception as err:  # no network and nothing cached, or a corrupt cache: one line, no traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SystemExit(
            f"error: could not load the pretrained weights ({first}); offline? run with --weights none"
        ) from None


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-path", default=None, help=f"image to explain (default: {DEFAULT_IMAGE.name})")
    p.add_argument("--weights", choices=["default", "none"], default="default", help="'none': random, offline")
    p.add_argument("--method", choices=sorted(METHODS), default="gradcam")
    p.add_argument("--image-size", type=int, default=224, help="input side; other than 224 needs --weights none")
    p.add_argument("--target-class", type=int, default=None, help="ImageNet class to explain (default: top-1)")
    p.add_argument("--output", default="cam_output/vit_cam.png", help="where to write the overlay PNG")
    p.add_argument("--device", default="cpu")
    p.add_argument("--verbose", action="store_true", help="log what pytorch_cam inferred")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> np.ndarray:
    """Run the example; writes the overlay PNG and returns the maps (1, H, W)."""
    args = parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    image = load_rgb(args.image_path, args.image_size)
    model = build_model(args.weights, args.image_size).to(args.device).eval()
    x = preprocess_image(image, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]).to(args.device)  # ImageNet
    targets = None if args.target_class is None else [ClassifierOutputTarget(args.target_class)]
    extra = {"progress": False} if args.method in BATCHED else {}

    # No reshape_transform: the token layout is recognised and the grid inferred from the input.
    # target_layers=None would pick this same layer.
    with METHODS[args.method](model=model, target_layers=[model.encoder.layers[-1].ln_1], **extra) as cam:
        maps = cam(input_tensor=x, targets=targets)

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), show_cam_on_image(image, maps[0]))  # BGR, as cv2.imwrite expects
    print(f"wrote {out}")
    return maps


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as err:  # a missing --image-path: one line, like cam.py
        raise SystemExit(f"error: {err}") from None
