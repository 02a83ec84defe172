"""Deep Feature Factorization of a ResNet's last block on the bundled photo.

    python usage_examples/dff_example.py                        # offline, random weights (the default)
    python usage_examples/dff_example.py --weights default      # ImageNet weights (downloaded once)
    python usage_examples/dff_example.py --n-components 4 --output-dir cam_output

NMF splits layer4's activations into ``--n-components`` concepts; the picture shows the photo,
each pixel painted with the colour of its strongest concept, and a legend naming each concept by
the classifier head's top classes on the concept's embedding. With random weights the concepts
and names are meaningless: the picture shows the pipeline, not what a trained ResNet sees.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torchvision

from pytorch_cam.feature_factorization import run_dff_on_image
from pytorch_cam.utils.image import load_image, preprocess_image

DEFAULT_IMAGE = Path(__file__).resolve().parent / "images" / "chelsea.png"
DEFAULT_OUTPUT_DIR = Path("cam_output")  # like the other examples and cam.py (git-ignored)


def load_rgb(path: Optional[str], size: int) -> np.ndarray:
    """Float RGB image in [0, 1], resized to size x size; the bundled photo by default."""
    image = load_image(path if path is not None else str(DEFAULT_IMAGE))
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def build_model(arch: str, weights: str) -> Tuple[torch.nn.Module, Optional[List[str]]]:
    """The model and its category names (None with random weights)."""
    builder = getattr(torchvision.models, arch)
    if weights == "none":
        torch.manual_seed(0)
        print("using random weights (--weights none): the concepts show the pipeline, not what a trained ResNet sees")
        return builder(weights=None), None
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        model = builder(weights=enum)
    except Exception as err:
        raise RuntimeError(f"could not load the pretrained weights ({err}); offline? run with --weights none") from err
    return model, list(enum.meta["categories"])


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-path", default=None, help=f"image to factorise (default: {DEFAULT_IMAGE.name})")
    p.add_argument("--arch", choices=["resnet18", "resnet50"], default="resnet50")
    p.add_argument("--weights", choices=["default", "none"], default="none", help="'none' (default): random, offline")
    p.add_argument("--n-components", type=int, default=5, help="number of concepts")
    p.add_argument("--top-k", type=int, default=2, help="classes listed per concept in the legend")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument(
        "--output-dir", default=str(DEFAULT_OUTPUT_DIR), help="where to write dff.png (default: %(default)s)"
    )
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> np.ndarray:
    """Run the example; writes dff.png and returns the picture (H, 3W, 3) uint8 RGB."""
    args = parse_args(argv)
    image = load_rgb(args.image_path, args.image_size)
    model, categories = build_model(args.arch, args.weights)
    model = model.to(args.device).eval()
    x = preprocess_image(image, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]).to(args.device)  # ImageNet

    picture = run_dff_on_image(
        model,
        model.layer4,
        classifier=model.fc,
        img_pil=np.uint8(np.round(image * 255)),
        img_tensor=x[0],
        n_components=args.n_components,
        top_k=args.top_k,
        labels=categories,
    )

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "dff.png"
    cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))  # cv2 writes BGR
    print(f"wrote {out}")
    return picture


if __name__ == "__main__":
    main()
