"""HuggingFace ``transformers`` vision models, explained with no wrapper and ``target_layers=None``.

    python usage_examples/huggingface.py                       # all four models, tiny, random weights, offline
    python usage_examples/huggingface.py --models vit dinov2 --output-dir /tmp/hf

HF models return a ``ModelOutput`` rather than a tensor. pytorch_cam reads ``.logits`` of a
classifier (``ViTForImageClassification``, ``ConvNextForImageClassification``,
``SwinForImageClassification``), finds the default target layer (the last block's first norm of
a transformer, the last stage of a ConvNeXt) and the token layout (class and register tokens,
the patch grid) by itself.

A backbone such as ``Dinov2Model`` has no logits: its output holds ``last_hidden_state`` and
``pooler_output`` (the image embedding). EigenCAM is class-agnostic and explains it with no
target. A gradient method needs a score: here the cosine similarity of the image's
``pooler_output`` to a concept embedding (``SimilarityToConceptTarget``), read from the output
by the target itself. Wrapping the model instead (``lambda x: model(x).pooler_output``) works
too, but hides the model's type, so the target layer and token layout must then be passed.

The models are built from small configs with random weights (``transformers`` needs no download
for that); with a pretrained checkpoint, ``from_pretrained(...)`` is the only change.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from pytorch_cam import EigenCAM, GradCAM
from pytorch_cam.utils.find_layers import module_name
from pytorch_cam.utils.image import load_image, preprocess_image, show_cam_on_image
from pytorch_cam.utils.model_targets import SimilarityToConceptTarget

DEFAULT_IMAGE = Path(__file__).resolve().parents[1] / "pytorch_cam" / "data" / "chelsea.png"
DEFAULT_OUTPUT_DIR = Path("cam_output") / "huggingface"
MODELS = ("vit", "convnext", "swin", "dinov2")
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
HALF = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # ViT's image processor normalises to [-1, 1]


def tiny_model(name: str, image_size: int, num_labels: int = 5) -> Tuple[torch.nn.Module, Tuple[list, list]]:
    """A small randomly initialised HF model and the mean/std its image processor would use."""
    try:
        import transformers as hf
    except ImportError:
        raise SystemExit("error: this example needs HuggingFace transformers: pip install transformers") from None

    vit_like = {
        "image_size": image_size,
        "patch_size": 8,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    }
    torch.manual_seed(0)
    if name == "vit":
        return hf.ViTForImageClassification(hf.ViTConfig(**vit_like, num_labels=num_labels)), HALF
    if name == "convnext":
        config = hf.ConvNextConfig(hidden_sizes=[16, 32, 64], depths=[1, 1, 1], num_stages=3, num_labels=num_labels)
        return hf.ConvNextForImageClassification(config), IMAGENET
    if name == "swin":
        config = hf.SwinConfig(
            image_size=image_size,
            patch_size=4,
            embed_dim=32,
            depths=[1, 1],
            num_heads=[2, 4],
            window_size=4,
            num_labels=num_labels,
        )
        return hf.SwinForImageClassification(config), IMAGENET
    if name == "dinov2":
        return hf.Dinov2Model(hf.Dinov2Config(**vit_like)), IMAGENET
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def pooled_similarity(concept: torch.Tensor) -> Callable[[Any], torch.Tensor]:
    """A target for an embedding backbone: cosine similarity of ``output["pooler_output"]`` to ``concept``.

    Each target receives one image's output; for a HF ``ModelOutput`` that is a dict of that image's
    entries (``last_hidden_state`` (tokens, C), ``pooler_output`` (C,)).
    """
    similarity = SimilarityToConceptTarget(concept)
    return lambda output: similarity(output["pooler_output"])


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-path", default=None, help=f"image to explain (default: {DEFAULT_IMAGE.name})")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--image-size", type=int, default=64, help="input side (a multiple of 32)")
    p.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR), help="where to write the PNGs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--verbose", action="store_true", help="log what pytorch_cam inferred (layer, token grid)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """Run the example; writes <model>_<method>.png, returns {"<model>_<method>": maps (1, H, W)}."""
    args = parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    image = cv2.resize(
        load_image(args.image_path or str(DEFAULT_IMAGE)),
        (args.image_size, args.image_size),
        interpolation=cv2.INTER_AREA,
    )
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print("HuggingFace models built from small configs with random weights (seed 0): the maps show the pipeline")
    maps = {}
    for name in args.models:
        model, (mean, std) = tiny_model(name, args.image_size)
        model = model.to(args.device).eval()
        x = preprocess_image(image, mean=mean, std=std).to(args.device)
        if name == "dinov2":
            # A backbone: EigenCAM needs no target ...
            cam = EigenCAM(model, target_layers=None)
            maps[f"{name}_eigencam"] = cam(x)
            # ... Grad-CAM explains the similarity of the pooled embedding to a concept, here the
            # embedding of the photo's upper-left quarter (not the image itself: at the maximum of
            # the cosine similarity its gradient vanishes and the map would be rounding noise).
            quarter = cv2.resize(image[: args.image_size // 2, : args.image_size // 2], image.shape[1::-1])
            with torch.no_grad():
                concept = model(preprocess_image(quarter, mean=mean, std=std).to(args.device)).pooler_output[0]
            grad_cam = GradCAM(model, target_layers=None)
            maps[f"{name}_gradcam"] = grad_cam(x, targets=[pooled_similarity(concept)])
        else:
            # A classifier: .logits are understood; targets=None explains the top class.
            cam = GradCAM(model, target_layers=None)
            maps[f"{name}_gradcam"] = cam(x)
            print(f"{name}: top class {int(cam.outputs.logits.argmax(dim=-1)[0])}")
        print(f"{name}: target layer '{module_name(model, cam.layers[0])}' (--verbose logs the token layout)")
    for key, cam_map in maps.items():
        cv2.imwrite(str(out_dir / f"{key}.png"), show_cam_on_image(image, cam_map[0]))
    print(f"wrote {', '.join(f'{k}.png' for k in maps)} to {out_dir}")
    return maps


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as err:  # a missing --image-path: one line
        raise SystemExit(f"error: {err}") from None
