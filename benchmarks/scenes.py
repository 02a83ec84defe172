"""(Re)train a scenes model: a thin command line over ``pytorch_cam.utils.scenes``.

    python -m benchmarks.scenes --model cnn|vit [--out PATH] [--epochs N] [--checkpoints DIR]

The scenes (one object of six classes with an exact ground-truth mask) and the models
(``ScenesCNN``, ``ScenesViT``) live in ``pytorch_cam.utils.scenes``; this module only knows where
the committed weights are: ``benchmarks/models/scenes_cnn.pt`` and ``scenes_vit.pt``.
``load_trained_cnn()`` / ``load_trained_vit()`` load them (training and saving the model there,
seeded, on a CPU, if the file is missing).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from pytorch_cam.utils import scenes
from pytorch_cam.utils.scenes import (
    CLASSES,
    NUM_CLASSES,
    TRAIN_SEED_BASE,
    ScenesCNN,
    ScenesViT,
    accuracy,
    generate_scenes,
    train_cnn,
    train_vit,
)

__all__ = [
    "CLASSES",
    "DEFAULT_MODEL_PATH",
    "DEFAULT_VIT_PATH",
    "NUM_CLASSES",
    "TRAIN_SEED_BASE",
    "ScenesCNN",
    "ScenesViT",
    "accuracy",
    "generate_scenes",
    "load_trained_cnn",
    "load_trained_vit",
    "train_cnn",
    "train_vit",
]

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "scenes_cnn.pt"
DEFAULT_VIT_PATH = Path(__file__).resolve().parent / "models" / "scenes_vit.pt"


def load_trained_cnn(cache_path: Union[str, Path, None] = None, device: Union[str, torch.device] = "cpu") -> ScenesCNN:
    """The trained scenes CNN in eval mode; trains and saves it to ``cache_path`` if absent.

    ``cache_path`` defaults to the committed ``benchmarks/models/scenes_cnn.pt``.
    """
    return scenes.load_trained_cnn(DEFAULT_MODEL_PATH if cache_path is None else cache_path, device)


def load_trained_vit(cache_path: Union[str, Path, None] = None, device: Union[str, torch.device] = "cpu") -> ScenesViT:
    """The trained scenes ViT in eval mode; trains and saves it to ``cache_path`` if absent.

    ``cache_path`` defaults to the committed ``benchmarks/models/scenes_vit.pt``.
    """
    return scenes.load_trained_vit(DEFAULT_VIT_PATH if cache_path is None else cache_path, device)


def _main(argv: Optional[list] = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="(Re)train a scenes model and report its test accuracy")
    parser.add_argument("--model", choices=["cnn", "vit"], default="cnn")
    parser.add_argument("--out", default=None, help="default: the committed benchmarks/models/scenes_<model>.pt")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--checkpoints", default=None, help="folder for a state dict after every epoch")
    args = parser.parse_args(argv)
    out = Path(args.out or (DEFAULT_MODEL_PATH if args.model == "cnn" else DEFAULT_VIT_PATH))

    def save(epoch: int, model: nn.Module) -> None:
        if args.checkpoints:
            Path(args.checkpoints).mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), Path(args.checkpoints) / f"epoch{epoch:03d}.pt")

    train = train_cnn if args.model == "cnn" else train_vit
    kw = {} if args.epochs is None else {"epochs": args.epochs}
    start = time.perf_counter()
    model = train(on_epoch=save, **kw)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    images, labels, _ = generate_scenes(2000, 0)
    print(
        f"saved {out} after {seconds:.0f} s of training; "
        f"test accuracy on 2000 scenes (seed 0): {accuracy(model, images, labels):.4f}"
    )


if __name__ == "__main__":
    _main()
