"""Command line: explain a torchvision classifier's prediction on one image, or on a whole folder.

    python cam.py --image-path cat.png --method gradcam
    pytorch-cam --method scorecam --cskip 64 --weights none
    python cam.py --image-dir images/ --output-dir cams/ --batch-size 64 --num-workers 4
    torchrun --nproc_per_node 4 cam.py --image-dir images/ --output-dir cams/ --use-cuda

One image: writes the overlay PNG, the raw map (.npy), guided backprop and guided CAM PNGs to
--output-dir. A folder (--image-dir): ``pytorch_cam.explain.explain_dataset`` stores every map in
shard files that ``pytorch_cam.explain.load_results`` reads (see docs/datasets.md); launched by
torchrun, the processes share the work.
Mistakes in the user's input (missing image, no network for the weights, no CUDA, ...) end with
one ``error: ...`` line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import pickle
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch import nn

from pytorch_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_cam.methods import BATCHED, METHODS
from pytorch_cam.utils.image import deprocess_image, load_image, preprocess_image, show_cam_on_image
from pytorch_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_cam.utils.precision import PRECISIONS

DEFAULT_IMAGE = Path(__file__).resolve().parent / "data" / "chelsea.png"  # package data: also after pip install .
EXIT_USAGE = 2


class CLIError(Exception):
    """A problem with the user's input; main prints it as one line and exits with code 2.

    ``all_ranks``: every process of a torchrun launch raises it too, so only rank 0 prints it.
    """

    def __init__(self, message: str, all_ranks: bool = True) -> None:
        super().__init__(message)
        self.all_ranks = all_ranks


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, like every other input error of the CLI (argparse would add the usage block).
        raise CLIError(f"{message} (see --help)")


def default_target_layers(model: nn.Module, arch: str) -> Optional[List[nn.Module]]:
    """The layer explained by default for a torchvision architecture: its last spatial feature block.

    ``None`` lets BaseCAM choose (transformers: the last block's first norm; token layout inferred).
    """
    name = arch.lower()
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        return [model.layer4[-1]]
    if name.startswith(("vgg", "alexnet")):
        # The last ReLU of the convolutional part, before the final max-pool.
        return [[m for m in model.features if isinstance(m, nn.ReLU)][-1]]
    if name.startswith("densenet"):
        return [model.features]
    if name.startswith(("mobilenet", "efficientnet", "convnext", "squeezenet")):
        return [model.features[-1]]
    if name.startswith("regnet"):
        return [model.trunk_output]
    if name.startswith("mnasnet"):
        return [model.layers[-1]]
    if name.startswith("shufflenet"):
        return [model.conv5]
    if name.startswith("googlenet"):
        return [model.inception5b]
    if name.startswith("inception"):
        return [model.Mixed_7c]
    # Anything else (ViT, Swin, MaxViT, ...): BaseCAM picks the layer and infers the token layout,
    # and logs what it chose.
    return None


def _parse_cskip(text: str) -> Union[int, float]:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--cskip takes a channel count (e.g. 64) or a ratio in (0, 1] (e.g. 0.25), got {text!r}"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


_METRIC_NAMES = ("confidence", "road")


def _parse_metrics(text: str) -> List[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in _METRIC_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"--metrics takes a comma-separated list of {', '.join(_METRIC_NAMES)}, got {text!r}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        # prog=None: argparse names the program as it was started (cam.py or pytorch-cam)
        description="Class activation map of a torchvision classifier's prediction on an image, or on every "
        "image of a folder (--image-dir; launch with torchrun to share the work between processes).",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--image-path", default=str(DEFAULT_IMAGE), help="input image (default: the bundled cat photo)")
    source.add_argument(
        "--image-dir",
        default=None,
        help="explain every image under this folder (recursively) instead of one image; the maps go to "
        "shard files in --output-dir (read them with pytorch_cam.explain.load_results)",
    )
    p.add_argument(
        "--method",
        default="gradcam",
        choices=[*METHODS, "all"],
        help="CAM method (default: gradcam); 'all' runs every method and writes a grid of their maps, "
        "the slow ones with CSKIP-16 (or 1%% of the channels for multi-layer Ablation-CAM)",
    )
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--use-cuda", action="store_true", help="run on the GPU (same as --device cuda)")
    dev.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--aug-smooth", action="store_true", help="average the maps of flipped/rescaled copies")
    p.add_argument("--eigen-smooth", action="store_true", help="first principal component of the weighted activations")
    p.add_argument(
        "--cskip",
        type=_parse_cskip,
        default=None,
        help="scorecam only: score just the K channels with the largest activation (int K or ratio)",
    )
    p.add_argument("--arch", default="resnet50", help="torchvision classification model (default: resnet50)")
    p.add_argument(
        "--weights",
        default="DEFAULT",
        help="DEFAULT (ImageNet weights, downloaded once to torchvision's cache), none (random weights) "
        "or PATH to a state dict saved with torch.save(model.state_dict(), PATH)",
    )
    p.add_argument("--target-class", type=int, default=None, help="class to explain (default: the top prediction)")
    p.add_argument(
        "--target",
        choices=["top1", "label"],
        default=None,
        help="--image-dir only: top1 explains each image's top prediction (the default); label explains the class "
        "of its folder in an ImageFolder layout DIR/<class>/<image> (class folders named by integers are those "
        "class indices, otherwise the sorted folder names are numbered 0, 1, ...)",
    )
    p.add_argument(
        "--input-size",
        type=_positive_int,
        default=224,
        help="the image is resized (aspect kept) so its shorter side has this many pixels before it goes "
        "through the model; outputs are at the photo's own size (default: 224). With --image-dir every image "
        "is resized to a square of this side (batches need one size) and the maps are stored at that size",
    )
    p.add_argument("--output-dir", default="cam_output", help="where the images go (default: cam_output/)")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=f"inputs scored per forward pass by {', '.join(sorted(BATCHED))} (default: auto, which on a CPU "
        "times a few sizes on the first chunks and keeps the fastest, and on a GPU takes the largest). With "
        "--image-dir: images per CAM call, for every method (default: 32)",
    )
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="forward/backward under autocast; fp32 is exact, bf16 ~2-3x faster on CPUs with bf16 support",
    )
    ds = p.add_argument_group("whole folders (--image-dir)")
    ds.add_argument(
        "--num-workers",
        type=_non_negative_int,
        default=None,
        help="processes that decode and resize images while the model runs (default: the CPU cores per "
        "process, at most 4; 0 reads them in the main process)",
    )
    ds.add_argument("--overlays", action="store_true", help="also write OUT/overlays/<image>.png at each photo's size")
    ds.add_argument(
        "--resume",
        action="store_true",
        help="finish the interrupted run in --output-dir: finished shards are kept, the others redone "
        "(the options must be the same)",
    )
    ds.add_argument(
        "--shard-size",
        type=_positive_int,
        default=256,
        help="images per shard file, the unit that --resume redoes (default: 256)",
    )
    ds.add_argument(
        "--metrics",
        type=_parse_metrics,
        default=None,
        help="per-image faithfulness metrics in the records and their dataset means in OUT/summary.json: "
        "confidence (confidence change) and/or road (ROAD), comma-separated",
    )
    return p


#: the options that only mean something with --image-dir, by their flag
_DATASET_ONLY = {
    "num_workers": "--num-workers",
    "overlays": "--overlays",
    "resume": "--resume",
    "metrics": "--metrics",
    "target": "--target",
}


def _check_args(args: argparse.Namespace) -> None:
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output-dir {str(out)!r} is a file, not a folder; pass a folder (it is created if missing)")
    if args.image_dir is not None:
        _check_dataset_args(args)
        return
    given = [flag for dest, flag in _DATASET_ONLY.items() if getattr(args, dest) not in (None, False)]
    if args.shard_size != 256:
        given.append("--shard-size")
    if given:
        raise CLIError(f"{given[0]} only applies to a folder of images: pass --image-dir DIR instead of --image-path")
    if args.method == "all":
        if args.cskip is not None or args.batch_size is not None:
            raise CLIError("--method all chooses each method's settings itself; drop --cskip and --batch-size")
        return
    _check_cskip(args)
    if args.batch_size is not None and args.method not in BATCHED:
        raise CLIError(f"--batch-size only applies to {', '.join(sorted(BATCHED))}, not to --method {args.method}")


def _check_cskip(args: argparse.Namespace) -> None:
    if args.cskip is not None and "cskip" not in inspect.signature(METHODS[args.method].__init__).parameters:
        takes = [n for n, c in METHODS.items() if "cskip" in inspect.signature(c.__init__).parameters]
        raise CLIError(f"--cskip only applies to {', '.join(takes)}, not to --method {args.method}")


def _weights_note(args: argparse.Namespace) -> Optional[str]:
    """What to tell the user about the weights they chose (None for torchvision's default ones)."""
    if args.weights.lower() == "none":
        return f"note: --weights none: {args.arch} has RANDOM weights, so predictions and maps are meaningless"
    if args.weights.upper() != "DEFAULT":
        return f"loaded weights from {args.weights}"
    return None


def _check_dataset_args(args: argparse.Namespace) -> None:
    if args.method == "all":
        raise CLIError("--method all compares methods on one image; with --image-dir pick one --method")
    if args.target is not None and args.target_class is not None:
        raise CLIError(f"--target {args.target} and --target-class both choose the class; pass one of them")
    _check_cskip(args)
    if args.target_class is not None and args.target_class < 0:
        raise CLIError(f"--target-class {args.target_class} is negative; pass a class index >= 0")


def _precision_kwargs(args: argparse.Namespace, name: str) -> Dict[str, Any]:
    """``precision=`` for the method's constructor: always when it names it, else only a non-default one."""
    params = inspect.signature(METHODS[name].__init__).parameters
    if "precision" in params:
        return {"precision": args.precision}
    if args.precision == "fp32":
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {"precision": args.precision}  # a meta-method passes it on to its base method
    raise CLIError(f"--precision {args.precision} is not available for --method {name}; drop it (fp32)")


def _device(args: argparse.Namespace) -> torch.device:
    text = "cuda" if args.use_cuda else (args.device or "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise CLIError(f"invalid --device {text!r} ({e}); use e.g. cpu, cuda or cuda:0") from None
    flag = "--use-cuda" if args.use_cuda else f"--device {text}"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"{flag} was given but CUDA is not available on this machine; drop it to run on the CPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"{flag}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"{flag} was given but MPS is not available on this machine; drop it to run on the CPU")
    return device


def _check_arch(arch: str) -> None:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else "e.g. resnet50, vgg16, densenet121"
        raise CLIError(f"unknown --arch {arch!r}: not a torchvision classification model; {hint}")


def _read_state_dict(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CLIError(
            f"--weights {path!r} is not a file; pass a state dict saved with torch.save(model.state_dict(), PATH), "
            "--weights DEFAULT for ImageNet weights or --weights none for random weights"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a pickled class: torch.save(model, PATH), not its state dict
            raise CLIError(
                f"--weights {path!r} holds a pickled object (e.g. a whole model saved with torch.save(model, PATH)), "
                "not a state dict; save one with torch.save(model.state_dict(), PATH)"
            ) from None
        raise CLIError(f"could not read --weights {path!r} as a torch state dict: {_first_line(e)}") from None
    except Exception as e:  # a file that is no torch checkpoint at all fails in many ways (KeyError, ...)
        raise CLIError(
            f"could not read --weights {path!r} as a torch state dict ({type(e).__name__}: {_first_line(e)}); "
            "save one with torch.save(model.state_dict(), PATH)"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint that wraps the state dict
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CLIError(
            f"--weights {path!r} does not hold a state dict (a dict of tensors); save one with "
            "torch.save(model.state_dict(), PATH)"
        )
    return obj


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = _ANSI.sub("", str(e)).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _mismatch_summary(model: nn.Module, state: Dict[str, Any]) -> str:
    """What does not fit between a state dict and a model, in one short line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if keys:
            shown = ", ".join(repr(k) for k in keys[:2]) + (", ..." if len(keys) > 2 else "")
            parts.append(f"{len(keys)} key(s) {what} ({shown})")
    return "; ".join(parts) or "the tensors do not load"


def load_model(arch: str, weights: str) -> nn.Module:
    """The torchvision model with ImageNet (``DEFAULT``), random (``none``) or local (PATH) weights."""
    import torchvision

    _check_arch(arch)
    if weights.lower() == "none":
        return torchvision.models.get_model(arch, weights=None)
    if weights.upper() == "DEFAULT":
        try:
            return torchvision.models.get_model(arch, weights="DEFAULT")
        except OSError as e:  # URLError, HTTPError, socket errors: no network and nothing cached
            raise CLIError(
                f"could not download the ImageNet weights of {arch} ({_first_line(e)}); with no network, pass "
                "--weights PATH (a local state dict) or --weights none (random weights)"
            ) from None
        except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # a truncated or corrupted cached file
            cache = os.path.join(torch.hub.get_dir(), "checkpoints")
            raise CLIError(
                f"the cached ImageNet weights of {arch} in {cache} could not be read ({_first_line(e)}); delete "
                "the file to download it again, or pass --weights PATH or --weights none"
            ) from None
    state = _read_state_dict(weights)
    model = torchvision.models.get_model(arch, weights=None)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise CLIError(
            f"--weights {weights!r} does not fit --arch {arch}: {_mismatch_summary(model, state)}; pass the "
            "architecture the weights were trained with"
        ) from None
    return model


def _categories(arch: str, num_classes: int) -> List[str]:
    import torchvision

    cats = list(torchvision.models.get_model_weights(arch).DEFAULT.meta["categories"])
    return cats if len(cats) == num_classes else [f"class {i}" for i in range(num_classes)]


# Architectures whose position embeddings fix the input to a square of the training size.
_SQUARE_INPUT = ("vit_", "maxvit")


def _model_input(rgb: np.ndarray, short_side: int, square: bool = False) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # OpenCV's (width, height)
    if square:
        size = (short_side, short_side)
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _write(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise CLIError(f"could not write {str(path)!r}; check that --output-dir is writable")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.image_dir is not None:
        return run_dataset(args)
    device = _device(args)
    try:
        rgb = load_image(args.image_path)
    except FileNotFoundError as e:
        raise CLIError(f"--image-path: {_first_line(e)}") from None

    model = load_model(args.arch, args.weights).to(device).eval()
    note = _weights_note(args)
    if note is not None:
        print(note)

    small = _model_input(rgb, args.input_size, square=args.arch.lower().startswith(_SQUARE_INPUT))
    x = preprocess_image(small).to(device)
    with torch.inference_mode():
        logits = model(x)
    probs = torch.softmax(logits.float(), dim=1)[0]
    names = _categories(args.arch, probs.numel())
    top = probs.topk(min(5, probs.numel()))
    print(f"top-5 predictions of {args.arch} on {args.image_path}:")
    for rank, (p, c) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1):
        print(f"  {rank}. {names[c]} (class {c}): {p:.3f}")

    target = int(top.indices[0]) if args.target_class is None else args.target_class
    if not 0 <= target < probs.numel():
        n = probs.numel()
        raise CLIError(f"--target-class {target} is outside the model's {n} classes (valid: 0..{n - 1})")
    print(f"explaining class {target} ({names[target]}) with {args.method}")

    methods = list(METHODS) if args.method == "all" else [args.method]
    h, w = rgb.shape[:2]
    out = Path(args.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"could not create --output-dir {str(out)!r}: {e.strerror or e}") from None
    image_stem = Path(args.image_path).stem
    gb = GuidedBackpropReLUModel(model)(x, target_category=target)
    gb = cv2.resize(gb, (w, h), interpolation=cv2.INTER_LINEAR)
    paths = {"guided backprop": out / f"{image_stem}_gb.png"}
    # Guided backprop is RGB-ordered like the input; OpenCV writes BGR.
    _write(paths["guided backprop"], cv2.cvtColor(deprocess_image(gb), cv2.COLOR_RGB2BGR))
    tiles = []
    for name in methods:
        kwargs, note = _method_kwargs(args, name, grid=args.method == "all")
        start = time.perf_counter()
        mask = _explain(args, model, x, target, name, kwargs, (h, w))
        seconds = time.perf_counter() - start
        stem = f"{image_stem}_{name}"
        overlay = show_cam_on_image(rgb, mask, use_rgb=True)
        paths[f"{name} overlay"] = out / f"{stem}.png"
        paths[f"{name} map"] = out / f"{stem}.npy"
        paths[f"{name} guided cam"] = out / f"{stem}_cam_gb.png"
        _write(paths[f"{name} overlay"], cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        np.save(paths[f"{name} map"], mask)
        _write(paths[f"{name} guided cam"], cv2.cvtColor(deprocess_image(mask[..., None] * gb), cv2.COLOR_RGB2BGR))
        tiles.append((f"{name}{note}", seconds, overlay))
        if args.method == "all":
            print(f"  {name}{note}: {seconds:.2f} s", flush=True)
    if args.method == "all":
        paths["grid of every method"] = out / f"{image_stem}_all.png"
        _write(paths["grid of every method"], cv2.cvtColor(method_grid(tiles), cv2.COLOR_RGB2BGR))
    for what, path in paths.items():
        print(f"wrote {what}: {path}")
    return 0


#: in --method all, the slow methods run with these settings (and the grid says so)
GRID_FAST = {
    "scorecam": ({"cskip": 16}, " (CSKIP-16)"),
    "sscam": ({"cskip": 16}, " (CSKIP-16)"),
    "iscam": ({"cskip": 16}, " (CSKIP-16)"),
    "ablationcam_multilayer": ({"ratio_channels_to_ablate": 0.01}, " (1% of channels)"),
}


def _method_kwargs(args: argparse.Namespace, name: str, grid: bool) -> Tuple[Dict[str, Any], str]:
    if grid:
        kwargs, note = GRID_FAST.get(name, ({}, ""))
        kwargs = dict(kwargs)
    else:
        kwargs, note = {}, ""
        if args.batch_size is not None:
            kwargs["batch_size"] = args.batch_size
        if args.cskip is not None:
            kwargs["cskip"] = args.cskip
    if name in BATCHED and "progress" in inspect.signature(METHODS[name].__init__).parameters:
        kwargs.setdefault("progress", not grid)
    kwargs.update(_precision_kwargs(args, name))
    return kwargs, note


def _explain(
    args: argparse.Namespace, model: nn.Module, x: torch.Tensor, target: int, name: str, kwargs: Dict[str, Any], size
) -> np.ndarray:
    """The map of ``name`` for ``target``, at the photo's size (H, W), float32 in [0, 1]."""
    try:
        cam_obj = METHODS[name](model=model, target_layers=default_target_layers(model, args.arch), **kwargs)
    except ValueError as e:  # e.g. an out-of-range --cskip, checked by the method itself
        raise CLIError(_first_line(e)) from None
    with cam_obj as cam:
        maps = cam(
            input_tensor=x,
            targets=[ClassifierOutputTarget(target)],
            aug_smooth=args.aug_smooth,
            eigen_smooth=args.eigen_smooth,
        )
    h, w = size
    return np.clip(cv2.resize(maps[0], (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0).astype(np.float32)


def method_grid(tiles: List[Tuple[str, float, np.ndarray]], columns: int = 5, width: int = 240) -> np.ndarray:
    """One RGB image of every map: each overlay under its method's name and run time."""
    band = 28
    cells = []
    for title, seconds, overlay in tiles:
        h, w = overlay.shape[:2]
        tile = cv2.resize(overlay, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        head = np.full((band, width, 3), 255, np.uint8)
        text = f"{title} {seconds:.2f}s"
        scale = min(0.5, 0.5 * (width - 8) / max(1, cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0]))
        cv2.putText(head, text, (4, band - 9), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        cells.append(np.concatenate([head, tile]))
    height = max(c.shape[0] for c in cells)
    cells = [np.pad(c, ((0, height - c.shape[0]), (0, 0), (0, 0)), constant_values=255) for c in cells]
    cells += [np.full_like(cells[0], 255)] * (-len(cells) % columns)
    rows = [np.concatenate(cells[i : i + columns], axis=1) for i in range(0, len(cells), columns)]
    return np.concatenate(rows, axis=0)


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def run_dataset(args: argparse.Namespace) -> int:
    """--image-dir: explain every image of the folder with ``explain_dataset`` (one or many processes)."""
    from pytorch_cam.explain import ExplainError, agree_on_error, explain_dataset, init_distributed

    rank0 = _rank() == 0
    say = print if rank0 else (lambda *a, **k: None)
    want = "cuda" if args.use_cuda else (args.device or "cpu")
    try:
        wanted_type = torch.device(want).type
    except RuntimeError:
        wanted_type = "cpu"
    # Join torchrun's group first, so that an error any process meets is reported once, by rank 0.
    d = init_distributed("cuda" if wanted_type == "cuda" and torch.cuda.is_available() else "cpu")
    try:
        error = None
        try:
            device = _device(args)
            if device.type == "cuda" and d.world_size > 1:
                if device.index is not None:
                    raise CLIError(
                        f"--device {want} under torchrun: pass --device cuda (or --use-cuda), and each process "
                        "takes the GPU of its LOCAL_RANK"
                    )
                device = torch.device("cuda", d.local_rank)
            if args.weights.lower() == "none":
                # every process (and a resumed run) must build the same random weights
                torch.manual_seed(0)
            model = load_model(args.arch, args.weights).to(device).eval()
            kwargs: Dict[str, Any] = {}
            if args.cskip is not None:
                kwargs["cskip"] = args.cskip
            if "progress" in inspect.signature(METHODS[args.method].__init__).parameters:
                kwargs["progress"] = False  # one bar for the whole run, not one per batch
            kwargs.update(_precision_kwargs(args, args.method))
            try:
                cam = METHODS[args.method](model=model, target_layers=default_target_layers(model, args.arch), **kwargs)
            except ValueError as e:
                raise CLIError(_first_line(e)) from None
        except CLIError as e:
            error = str(e)
        error = agree_on_error(d, error)
        if error is not None:
            raise CLIError(error)
        notes = [note for note in [_weights_note(args)] if note is not None]

        def log(message: str) -> None:
            # the notes wait for the input checks, so that a bad input ends with the error line alone
            while notes:
                say(notes.pop(0))
            say(message)

        targets: Any = "top1"
        if args.target_class is not None:
            targets = args.target_class
        elif args.target == "label":
            targets = "label"
        try:
            summary = explain_dataset(
                cam,
                args.image_dir,
                args.output_dir,
                targets=targets,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                input_size=args.input_size,
                shard_size=args.shard_size,
                resume=args.resume,
                overlays=args.overlays,
                metrics=args.metrics or (),
                aug_smooth=args.aug_smooth,
                eigen_smooth=args.eigen_smooth,
                run_info={"arch": args.arch, "weights": args.weights},
                log=log,
            )
        except ExplainError as e:
            raise CLIError(_first_line(e, limit=600), all_ranks=e.all_ranks) from None
    finally:
        if d.created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    _report(summary, say)
    return 0


def _report(summary: Dict[str, Any], say: Any) -> None:
    out = summary["out_dir"]
    errors = summary["errors"]
    procs = f", {summary['world_size']} processes" if summary["world_size"] > 1 else ""
    if summary["explained_now"]:
        say(
            f"explained {summary['explained_now']} images in {summary['seconds']:.1f} s "
            f"({summary['images_per_s']:.1f} images/s{procs})"
        )
    else:
        say(f"nothing left to do: all {summary['shards']} shard(s) in {out} were finished before")
    say(f"{summary['ok']} maps, {errors} unreadable image(s)")
    for key, message in summary["first_errors"]:
        say(f"  {key}: {message}")
    if errors > len(summary["first_errors"]):
        say("  ... (every error is in its record: status 'error')")
    h, w = summary["map"]["shape"]
    verb = "wrote" if summary["explained_now"] else "found"
    say(
        f"{verb} {summary['shards']} shard(s), manifest.json and summary.json in {out} ({h}x{w} maps, 1 byte per "
        f"pixel: {summary['bytes_per_map']} bytes a map before compression)"
    )
    for name, value in (summary["metrics"] or {}).items():
        say(f"  mean {name}: {value:.4f}" if value is not None else f"  mean {name}: n/a")
    say(f"read them with pytorch_cam.explain.load_results({out!r})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return run(args)
    except CLIError as e:
        # Under torchrun every process meets the same error: rank 0 says it.
        if _rank() == 0 or not e.all_ranks:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
