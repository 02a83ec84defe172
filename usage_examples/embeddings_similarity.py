"""Grad-CAM for an embedding model: where does an image match a concept? (SimilarityToConceptTarget)

    python usage_examples/embeddings_similarity.py                    # offline: random weights (seeded)
    python usage_examples/embeddings_similarity.py --weights default  # ImageNet weights (downloaded once)

An embedding model (here ResNet-18 with its classifier replaced by ``nn.Identity``) returns a
(B, 512) feature vector, not class scores. ``SimilarityToConceptTarget(concept)`` scores the
cosine similarity between an image's embedding and a concept embedding, and Grad-CAM shows the
regions that make the image similar to the concept.

The scene puts the bundled photo (left) next to a striped texture (right); the two concepts are
the embeddings of the photo alone and of the texture alone. Each map leans towards its own half
(the script prints the shares; with random weights this holds at the default 224 px, not at
every size).

Note: explain an image against a concept computed from *another* image (or crop). Against its
own embedding the cosine similarity is at its maximum, 1, where its gradient vanishes: Grad-CAM's
map is then scaled-up rounding noise (gradients of ~1e-11).
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
from pytorch_cam.utils.model_targets import SimilarityToConceptTarget

DEFAULT_IMAGE = Path(__file__).resolve().parents[1] / "pytorch_cam" / "data" / "chelsea.png"
DEFAULT_OUTPUT_DIR = Path("cam_output") / "embeddings"
# torchvision's ResNets are trained on ImageNet-normalised inputs.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build_embedder(weights: str) -> torch.nn.Module:
    """ResNet-18 whose output is its 512-d pooled feature vector."""
    if weights == "none":
        torch.manual_seed(0)
        print("ResNet-18 with random weights (seed 0): the maps show the pipeline, not what a trained model sees")
        model = torchvision.models.resnet18(weights=None)
    else:
        try:
            model = torchvision.models.resnet18(weights=torchvision.models.ResNet18_Weights.DEFAULT)
        except Exception as err:  # no network and nothing cached: one line, no traceback
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SystemExit(
                f"error: could not load the pretrained weights ({first}); offline? run with --weights none"
            ) from None
    model.fc = torch.nn.Identity()
    return model


def stripes(height: int, width: int) -> np.ndarray:
    """A diagonal two-colour striped texture of low contrast, float32 RGB in [0.35, 0.65].

    Low contrast, so that its activations are of the photo's order: a random network responds to
    hard stripes far more strongly than to anything else, and both maps would go there.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    on = np.float32(np.sin(xx / 3.0 + yy / 5.0) > 0)
    rgb = np.stack([on, 0.3 * on + 0.2, 1.0 - on], axis=-1)
    return (0.5 + 0.3 * (rgb - 0.5)).astype(np.float32)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-path", default=None, help=f"photo for the left half (default: {DEFAULT_IMAGE.name})")
    p.add_argument("--weights", choices=["none", "default"], default="none", help="'none' (default): random, offline")
    p.add_argument("--image-size", type=int, default=224, help="side of the square scene")
    p.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR), help="where to write the PNGs")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """Run the example; writes photo_concept.png and texture_concept.png, returns {concept: maps (1, H, W)}."""
    args = parse_args(argv)
    size, half = args.image_size, args.image_size // 2
    photo = load_image(args.image_path or str(DEFAULT_IMAGE))
    scene = np.concatenate(
        [cv2.resize(photo, (half, size), interpolation=cv2.INTER_AREA), stripes(size, size - half)], axis=1
    )
    concept_images = {
        "photo": cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA),
        "texture": stripes(size, size),
    }

    model = build_embedder(args.weights).to(args.device).eval()

    def embed(image: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return model(preprocess_image(image, mean=IMAGENET_MEAN, std=IMAGENET_STD).to(args.device))[0]

    x = preprocess_image(scene, mean=IMAGENET_MEAN, std=IMAGENET_STD).to(args.device)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    maps = {}
    with GradCAM(model, target_layers=[model.layer4[-1]]) as cam:
        for name, image in concept_images.items():
            maps[name] = cam(x, targets=[SimilarityToConceptTarget(embed(image))])
            cv2.imwrite(str(out_dir / f"{name}_concept.png"), show_cam_on_image(scene, maps[name][0]))
            left = maps[name][0][:, :half].sum() / max(float(maps[name][0].sum()), 1e-12)
            print(f"{name} concept: {left:.0%} of the map on the photo (left), {1 - left:.0%} on the texture")
    print(f"wrote {', '.join(f'{n}_concept.png' for n in maps)} to {out_dir}")
    return maps


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as err:  # a missing --image-path: one line
        raise SystemExit(f"error: {err}") from None
