"""Grad-CAM for a Swin Transformer (torchvision ``swin_t``) — no reshape_transform needed.

    python usage_examples/swinT_example.py                    # ImageNet weights (downloaded once)
    python usage_examples/swinT_example.py --weights none     # offline, random weights

torchvision's Swin blocks return channels-last maps (B, H, W, C). pytorch_cam recognises the
layout (the block's LayerNorm width equals the last dimension) and permutes it to (B, C, H, W);
pass ``reshape_transform=swin_reshape_transform`` to be explicit. Non-square inputs work too.
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
from pytorch_cam.utils.reshape_transforms import swin_reshape_transform

DEFAULT_IMAGE = Path(__file__).resolve().parent / "images" / "chelsea.png"


def load_rgb(path: Optional[str], height: int, width: int) -> np.ndarray:
    """Float RGB image in [0, 1], resized to height x width; the bundled photo by default."""
    if path is not None:
        image = load_image(path)
    elif DEFAULT_IMAGE.exists():
        image = load_image(str(DEFAULT_IMAGE))
    else:  # the same cat, from scikit-image's bundled data
        from skimage import data

        image = np.float32(data.chelsea()) / 255.0
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def build_model(weights: str) -> torch.nn.Module:
    if weights == "none":
        torch.manual_seed(0)
        print("using random weights (--weights none): the map shows the pipeline, not what a trained Swin sees")
        return torchvision.models.swin_t(weights=None)
    try:
        return torchvision.models.swin_t(weights=torchvision.models.Swin_T_Weights.DEFAULT)
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
    p.add_argument("--height", type=int, default=224, help="input height (any multiple of 32 works)")
    p.add_argument("--width", type=int, default=224, help="input width")
    p.add_argument("--target-class", type=int, default=None, help="ImageNet class to explain (default: top-1)")
    p.add_argument("--output", default="cam_output/swinT_cam.png", help="where to write the overlay PNG")
    p.add_argument("--device", default="cpu")
    p.add_argument("--verbose", action="store_true", help="log what pytorch_cam inferred")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> np.ndarray:
    """Run the example; writes the overlay PNG and returns the maps (1, H, W)."""
    args = parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    image = load_rgb(args.image_path, args.height, args.width)
    model = build_model(args.weights).to(args.device).eval()
    x = preprocess_image(image, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]).to(args.device)  # ImageNet
    targets = None if args.target_class is None else [ClassifierOutputTarget(args.target_class)]
    extra = {"progress": False} if args.method in BATCHED else {}

    # The last block's first norm, as in the pytorch-grad-cam tutorials; target_layers=None picks it too.
    # reshape_transform may be left out: the channels-last layout is detected.
    with METHODS[args.method](
        model=model,
        target_layers=[model.features[-1][-1].norm1],
        reshape_transform=swin_reshape_transform,
        **extra,
    ) as cam:
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
