"""Explain a whole dataset: one CAM per image of a folder or a Dataset, on one or many processes.

    from pytorch_cam import GradCAM
    from pytorch_cam.explain import explain_dataset, load_results

    with GradCAM(model, [model.layer4[-1]]) as cam:
        explain_dataset(cam, "images/", "cams/", targets="top1", batch_size=32, num_workers=4)
    results = load_results("cams/")  # {"cat/001.jpg": {"map": (224, 224) float32, "target": 281, ...}}

Pipeline: a DataLoader's workers decode and resize the images while the model runs; each batch
goes through the CAM in one call; a background thread quantises the maps and writes them, so the
device never waits on the disk.

Work is cut into *shards*: shard ``j`` holds the images ``j * shard_size ... (j + 1) * shard_size - 1``
of the dataset in key order, explained in batches of ``batch_size`` that start at the shard's
first image. Which process explains a shard, or whether it is redone after a kill, never changes
its batches, so the maps are the same for any number of processes and for resumed runs. Launched
by ``torchrun`` (``WORLD_SIZE`` > 1) the call joins torchrun's process group (gloo on the CPU,
NCCL for CUDA tensors) and the unfinished shards are dealt out round-robin to the ranks.

Layout of ``out_dir``::

    run.json              the run's options and the dataset's fingerprint (written first)
    shards/shard-00000.npz one file per shard (written atomically: a temp file, then a rename)
    manifest.json         the finished run: shards, counts, map format (rank 0, after every shard)
    summary.json          counts and, with ``metrics=``, the dataset means of each metric
    overlays/<key>.png    with ``overlays=True``: the map over the photo, at the photo's size

A shard file is a zip of numpy arrays: ``keys``, ``index``, ``maps`` (uint8, (n, H, W): the map
times 255, rounded, so the quantisation error is at most 1/510), ``target``, ``score``, ``status``,
``error``, ``size`` (each image's own (H, W)), ``label`` and one float32 array per metric.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pytorch_cam.base_cam import primary_output
from pytorch_cam.utils.image import IMAGENET_MEAN, IMAGENET_STD, show_cam_on_image
from pytorch_cam.utils.model_state import eval_mode
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

__all__ = [
    "ExplainError",
    "ImageFiles",
    "LazyResults",
    "collate_items",
    "explain_dataset",
    "init_distributed",
    "load_results",
]

logger = logging.getLogger("pytorch_cam")

FORMAT = "pytorch_cam.explain/1"
#: file name endings read as images (case-insensitive)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
#: the per-image metrics ``metrics=`` accepts, and the record fields each adds
METRICS = {
    "confidence": ("confidence_change",),
    "road": ("road", "road_morf", "road_lerf"),
}
#: test hook: a process that has written this many shards kills itself with SIGKILL (a crash at a
#: shard boundary, for the resume tests); never set it outside tests
KILL_AFTER_SHARDS_ENV = "PYTORCH_CAM_EXPLAIN_KILL_AFTER_SHARDS"
MAP_SCALE = 255

TargetsSpec = Union[str, int, Sequence[int], Mapping]


class ExplainError(ValueError):
    """Bad input for a dataset run (empty folder, an output folder that holds another run, ...).

    ``all_ranks`` is True when every process of a distributed run raises the same error (so one
    of them, rank 0, is enough to report it).
    """

    def __init__(self, message: str, all_ranks: bool = False) -> None:
        super().__init__(message)
        self.all_ranks = all_ranks


# ---------------------------------------------------------------------------------- datasets
def list_images(root: Union[str, os.PathLike], exclude: Optional[Path] = None) -> List[str]:
    """Image files under ``root`` (recursively; hidden files and folders skipped): sorted POSIX paths relative to it."""
    root = Path(root)
    exclude = exclude.resolve() if exclude is not None else None
    keys: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        # The output folder may sit inside the image folder: its overlays are not input.
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
        )
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                keys.append((here / name).relative_to(root).as_posix())
    return sorted(keys)


def _class_index(names: Sequence[str]) -> Dict[str, int]:
    # Folders named by integers are the model's class indices themselves ("281/" is class 281);
    # otherwise the classes are numbered in sorted order, as torchvision's ImageFolder does.
    if all(n.isdigit() for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(sorted(names))}


def _read_rgb(path: str, draft: Optional[int] = None) -> Tuple[Any, Tuple[int, int]]:
    """A PIL RGB image of ``path`` and its own (H, W); ``draft`` lets JPEG decode at a reduced scale >= draft."""
    from PIL import Image

    with Image.open(path) as img:
        size = (img.height, img.width)
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", (draft, draft))  # DCT scaling: far less work for large photos
        rgb = img.convert("RGB")
    return rgb, size


def _error_text(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:500]


class ImageFiles(Dataset):
    """The images under a folder, sorted by path, each resized to ``input_size`` x ``input_size``.

    An item is a dict: ``image`` (uint8 (3, S, S) RGB, normalised later on the device), ``index``,
    ``label`` (the class of ``DIR/<class>/...`` with ``labels=True``, else -1), ``size`` (the
    image's own (H, W)) and ``error`` ("" or why the file could not be read; the image is then zeros).
    Every image is squashed to the square, aspect ratio not kept, so a map covers the whole photo
    and goes back onto it with a plain resize.
    """

    normalised = False

    def __init__(
        self,
        root: Union[str, os.PathLike],
        input_size: int = 224,
        labels: bool = False,
        exclude: Optional[Path] = None,
    ) -> None:
        self.root = Path(root)
        self.input_size = int(input_size)
        self.keys = list_images(self.root, exclude)
        self.classes: Optional[List[str]] = None
        self.labels: Optional[List[int]] = None
        if labels and self.keys:
            loose = [k for k in self.keys if "/" not in k]
            if loose:
                raise ExplainError(
                    f"--target label needs the ImageFolder layout DIR/<class>/<image>, but {len(loose)} image(s) "
                    f"lie directly in {str(self.root)!r} (e.g. {loose[0]!r}); move them into class folders"
                )
            names = sorted({k.split("/", 1)[0] for k in self.keys})
            index = _class_index(names)
            self.classes = names
            self.labels = [index[k.split("/", 1)[0]] for k in self.keys]

    def __len__(self) -> int:
        return len(self.keys)

    def path(self, index: int) -> str:
        return str(self.root / self.keys[index])

    def __getitem__(self, index: int) -> Dict[str, Any]:
        from PIL import Image

        s = self.input_size
        label = self.labels[index] if self.labels is not None else -1
        try:
            rgb, size = _read_rgb(self.path(index), draft=s)
            rgb = rgb.resize((s, s), Image.BILINEAR)
            image = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy())
            error = ""
        except Exception as e:  # any decoder failure is this image's record, not the run's end
            image, size, error = torch.zeros(3, s, s, dtype=torch.uint8), (0, 0), _error_text(e)
        return {"image": image, "index": index, "label": label, "size": size, "error": error}


class _DatasetItems(Dataset):
    """A user's Dataset seen as ImageFiles items: its image tensor, its label, and failures as records."""

    normalised = True

    def __init__(self, dataset: Dataset, image_shape: Tuple[int, ...]) -> None:
        self.dataset = dataset
        self.image_shape = tuple(image_shape)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        try:
            image, label = _split_item(self.dataset[index])
            if tuple(image.shape) != self.image_shape:
                raise ValueError(
                    f"image of shape {tuple(image.shape)}, the others are {self.image_shape}; "
                    "resize every image to one size in the dataset's transform"
                )
            error = ""
        except Exception as e:
            image, label, error = torch.zeros(self.image_shape), -1, _error_text(e)
        return {"image": image, "index": index, "label": label, "size": tuple(image.shape[-2:]), "error": error}


def _split_item(item: Any) -> Tuple[torch.Tensor, int]:
    """(image tensor (C, H, W), label or -1) of a dataset item: a tensor, (image, label, ...) or a dict."""
    label: Any = -1
    if isinstance(item, Mapping):
        image = item.get("image", item.get("pixel_values"))
        label = item.get("label", -1)
    elif isinstance(item, (tuple, list)) and item:
        image = item[0]
        if len(item) > 1:
            label = item[1]
    else:
        image = item
    if not torch.is_tensor(image) or image.ndim != 3 or not image.is_floating_point():
        what = f"a tensor of shape {tuple(image.shape)}" if torch.is_tensor(image) else type(image).__name__
        raise TypeError(
            f"the dataset gives {what} as the image; it must give a float (C, H, W) tensor, normalised for the "
            "model (a transform such as ToTensor + Normalize + Resize), or pass the image folder itself"
        )
    if torch.is_tensor(label):
        label = label.item() if label.numel() == 1 else -1
    return image, int(label) if isinstance(label, (int, np.integer)) else -1


def collate_items(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The DataLoader ``collate_fn`` of ImageFiles items: ``image`` stacks the readable images only."""
    ok = [not it["error"] for it in items]
    good = [it["image"] for it, k in zip(items, ok) if k]
    return {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "ok": torch.tensor(ok, dtype=torch.bool),
        "image": torch.stack(good) if good else None,
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "size": torch.tensor([list(it["size"]) for it in items], dtype=torch.long).reshape(len(items), 2),
        "error": [it["error"] for it in items],
    }


@dataclass
class _Source:
    """What a run reads: items, their keys, their files (overlays) and labels."""

    items: Dataset
    keys: List[str]
    paths: Optional[List[str]]
    classes: Optional[List[str]]
    labels: Optional[List[int]]  # known up front (folders); None: from each item
    map_shape: Tuple[int, int]
    batch_size: Optional[int] = None
    num_workers: Optional[int] = None
    describe: str = ""


def _source(
    data: Any, input_size: int, want_labels: bool, out_dir: Path, batch_size: Optional[int], num_workers: Optional[int]
) -> _Source:
    if isinstance(data, DataLoader):
        batch_size = batch_size if batch_size is not None else data.batch_size
        num_workers = num_workers if num_workers is not None else data.num_workers
        data = data.dataset
    if isinstance(data, (str, os.PathLike)):
        root = Path(data)
        if not root.is_dir():
            raise ExplainError(f"image folder {str(root)!r} does not exist or is not a folder")
        files = ImageFiles(root, input_size, labels=want_labels, exclude=out_dir)
        if not files.keys:
            raise ExplainError(
                f"no images in {str(root)!r} (looked for {', '.join(IMAGE_EXTENSIONS)} files in it and its sub-folders)"
            )
        return _Source(
            files,
            files.keys,
            [files.path(i) for i in range(len(files))],
            files.classes,
            files.labels,
            (input_size, input_size),
            batch_size,
            num_workers,
            str(root),
        )
    if not isinstance(data, Dataset) or not hasattr(data, "__len__"):
        raise ExplainError(
            "explain_dataset takes an image folder, a map-style torch Dataset or a DataLoader, "
            f"got {type(data).__name__}"
        )
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise ExplainError(f"the dataset ({type(data).__name__}) is empty")
    samples = getattr(data, "samples", None)
    root = getattr(data, "root", None)
    paths = keys = None
    if isinstance(samples, (list, tuple)) and len(samples) == n and root is not None:
        paths = [str(s[0]) for s in samples]  # torchvision ImageFolder / DatasetFolder
        keys = [Path(p).relative_to(root).as_posix() if Path(p).is_relative_to(root) else p for p in paths]
    if keys is None:
        width = len(str(n - 1))
        keys = [str(i).zfill(width) for i in range(n)]
    if len(set(keys)) != len(keys):
        raise ExplainError("the dataset's file paths are not unique; every image needs its own key")
    # The first readable item fixes the image shape every batch must have.
    first_error = ""
    for i in range(min(n, 16)):
        try:
            image, _ = _split_item(data[i])
            break
        except TypeError as e:
            raise ExplainError(str(e)) from None
        except Exception as e:
            first_error = _error_text(e)
    else:
        raise ExplainError(f"none of the dataset's first {min(n, 16)} items could be read ({first_error})")
    classes = getattr(data, "classes", None)
    return _Source(
        _DatasetItems(data, tuple(image.shape)),
        keys,
        paths,
        list(classes) if isinstance(classes, (list, tuple)) else None,
        None,
        tuple(image.shape[-2:]),  # type: ignore[arg-type]
        batch_size,
        num_workers,
        f"{type(data).__name__} of {n} images",
    )


# ------------------------------------------------------------------------------- distribution
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: whether this module created the process group (and so destroys it)
    created: bool = False


def init_distributed(device: Union[str, torch.device, None] = None) -> DistInfo:
    """Join the process group of a ``torchrun`` launch (environment ``WORLD_SIZE`` > 1), once.

    gloo carries everything on the CPU; with a CUDA ``device`` NCCL carries CUDA tensors and the
    process takes ``cuda:LOCAL_RANK``. Rendezvous (single- or multi-node) is torchrun's own:
    this reads the ``MASTER_ADDR``/``MASTER_PORT``/``RANK`` it sets. A group that already exists
    (``torch.distributed.init_process_group`` called by the caller) is used as it is.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available():
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    backend = "gloo"
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            # torch's own message here is "invalid device ordinal", which names neither cause
            raise ExplainError(
                f"torchrun started process LOCAL_RANK={local_rank} but this machine has "
                f"{torch.cuda.device_count()} GPU(s); pass --nproc-per-node at most the GPU count"
            )
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    # One shard may take minutes, and the barriers wait for the slowest rank's last shard.
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, True)


def _world(d: DistInfo) -> bool:
    return d.world_size > 1


def agree_on_error(d: DistInfo, error: Optional[str]) -> Optional[str]:
    """The first error any rank met (prefixed with its rank when rank 0 met none), the same on every rank."""
    if not _world(d):
        return error
    errors: List[Optional[str]] = [None] * d.world_size
    dist.all_gather_object(errors, error)
    for r, e in enumerate(errors):
        if e is not None:
            return e if r == 0 else f"(rank {r}) {e}"
    return None


def _broadcast(d: DistInfo, obj: Any) -> Any:
    if not _world(d):
        return obj
    box = [obj if d.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_sum(d: DistInfo, values: List[float]) -> List[float]:
    if not _world(d) or not values:
        return values
    # float64 on the CPU (gloo); an NCCL-only group needs the values on this rank's GPU
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def _barrier(d: DistInfo) -> None:
    if _world(d):
        dist.barrier()


def _gather(d: DistInfo, obj: Any) -> List[Any]:
    if not _world(d):
        return [obj]
    out: List[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


class _RankLogs(logging.Filter):
    """During a run: ranks other than 0 keep only errors; rank 0 says each warning once (not once a batch)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.rank != 0:
            return record.levelno >= logging.ERROR
        if record.msg in self.seen:
            return False
        self.seen.add(record.msg)
        return True


# ------------------------------------------------------------------------------ run options
def _model_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer's bytes: a resumed run must use the same weights."""
    h = hashlib.blake2b(digest_size=12)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _layer_names(cam: Any) -> Optional[List[str]]:
    layers = getattr(cam, "target_layers", None)
    if not layers:
        return None
    names = {id(m): n for n, m in cam.model.named_modules()}
    return [names.get(id(m), type(m).__name__) for m in layers]


def _cam_options(cam: Any) -> Dict[str, Any]:
    """The CAM object's own settings that shape its maps (its public scalar attributes)."""
    skip = {"progress", "detach"}
    out = {}
    for k, v in sorted(vars(cam).items()):
        if k.startswith("_") or k in skip:
            continue
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
    transform = getattr(cam, "reshape_transform", None)
    if transform is not None:
        out["reshape_transform"] = getattr(transform, "__qualname__", type(transform).__name__)
    base = getattr(cam, "base_cam", None)  # meta-methods (FinerCAM, SESS, ...) wrap a base method
    if base is not None and base is not cam:
        out["base_method"] = {"method": type(base).__name__, **_cam_options(base)}
    return out


def _targets_option(targets: TargetsSpec, n: int, keys: List[str]) -> Tuple[Any, Optional[np.ndarray]]:
    """(what run.json records, per-image class indices or None for top1/label)."""
    if isinstance(targets, str):
        if targets not in ("top1", "label"):
            raise ExplainError(
                f"targets must be 'top1' (each image's top class), 'label' (its dataset label), a class index, or "
                f"one class index per image; got {targets!r}"
            )
        return targets, None
    if isinstance(targets, (int, np.integer)) and not isinstance(targets, bool):
        if targets < 0:
            raise ExplainError(f"target class {targets} is negative; pass a class index >= 0")
        return int(targets), np.full(n, int(targets), np.int64)
    if isinstance(targets, Mapping):
        missing = [k for k in keys if k not in targets]
        if missing:
            raise ExplainError(
                f"targets has no class for {len(missing)} image(s) (e.g. {missing[0]!r}); give one per image key"
            )
        classes = np.asarray([targets[k] for k in keys], dtype=np.int64)
    elif isinstance(targets, (Sequence, np.ndarray, torch.Tensor)):
        classes = np.asarray(targets.tolist() if torch.is_tensor(targets) else targets, dtype=np.int64).reshape(-1)
        if classes.shape[0] != n:
            raise ExplainError(
                f"targets has {classes.shape[0]} class indices for {n} images; give one per image, in key order"
            )
    else:
        raise ExplainError(
            f"targets must be 'top1', 'label', an int or one int per image, got {type(targets).__name__}"
        )
    if (classes < 0).any():
        raise ExplainError("targets holds negative class indices; pass class indices >= 0")
    return "per-image:" + hashlib.blake2b(classes.tobytes(), digest_size=12).hexdigest(), classes


#: the options a "different run" message names first
_KEY_ORDER = ("method", "arch", "weights", "model", "targets", "dataset", "input_size", "batch_size", "shard_size")


def _describe_diff(old: Dict[str, Any], new: Dict[str, Any]) -> str:
    parts = []
    keys = sorted(set(old) | set(new), key=lambda k: (_KEY_ORDER.index(k) if k in _KEY_ORDER else len(_KEY_ORDER), k))
    if old.get("method") != new.get("method"):
        keys = [k for k in keys if k not in ("cam", "target_layers")]  # another method has other settings
    for k in keys:
        if old.get(k) != new.get(k):
            a, b = old.get(k), new.get(k)
            if isinstance(a, dict) and isinstance(b, dict):
                inner = [
                    f"{k}.{j}: {a.get(j)!r} -> {b.get(j)!r}" for j in sorted(set(a) | set(b)) if a.get(j) != b.get(j)
                ]
                parts.extend(inner)
            else:
                parts.append(f"{k}: {a!r} -> {b!r}")
    text = "; ".join(parts[:4]) + ("; ..." if len(parts) > 4 else "")
    return text if len(text) <= 400 else text[:397] + "..."


# ----------------------------------------------------------------------------------- output
def _shard_name(j: int) -> str:
    return f"shards/shard-{j:05d}.npz"


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temp file in its folder and a rename: readers (and resumes) see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _remove_temp_files(out: Path) -> None:
    """Temp files of a killed run (never renamed, so never part of any result)."""
    for folder in (out, out / "shards"):
        if folder.is_dir():
            for p in folder.glob(".*.tmp-*"):
                p.unlink(missing_ok=True)
    overlays = out / "overlays"
    if overlays.is_dir():
        for p in overlays.rglob(".*.tmp-*"):
            p.unlink(missing_ok=True)


def _overlay_name(key: str) -> str:
    # The key keeps its extension ("a.jpg" -> "a.jpg.png"): "a.jpg" and "a.png" never collide.
    return f"overlays/{key}.png"


def _check_out_dir(out: Path, run: Dict[str, Any], resume: bool) -> Tuple[Optional[str], List[int]]:
    """(an error, or None and the shards already finished) for writing ``run`` into ``out``."""
    ours = ("run.json", "manifest.json", "summary.json", "shards")
    if out.exists() and not out.is_dir():
        return f"output folder {str(out)!r} is a file, not a folder; pass a folder (it is created if missing)", []
    run_file = out / "run.json"
    if not run_file.exists():
        present = [n for n in ours if (out / n).exists()]
        if present:
            return (
                f"output folder {str(out)!r} holds results ({present[0]}) but no run.json; choose another "
                "output folder (nothing was overwritten)",
                [],
            )
        return None, []
    try:
        old = _read_json(run_file)
        old_options = old["options"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{str(run_file)!r} cannot be read ({_error_text(e)}); choose another output folder", []
    new_options = run["options"]
    finished = (out / "manifest.json").exists()
    if old_options != new_options:
        diff = _describe_diff(old_options, new_options)
        if resume:
            return (
                f"--resume: the options differ from the run in {str(out)!r} ({diff}); resume with its options "
                "or choose another output folder",
                [],
            )
        return (
            f"output folder {str(out)!r} holds a different run ({diff}); choose another output folder "
            "(nothing was overwritten)",
            [],
        )
    n_shards = run["shards"]
    done = [j for j in range(n_shards) if (out / _shard_name(j)).is_file()]
    if not resume:
        if finished:
            return (
                f"output folder {str(out)!r} already holds this finished run; read it with "
                "pytorch_cam.explain.load_results or choose another output folder",
                [],
            )
        return (
            f"output folder {str(out)!r} holds an unfinished run of these options ({len(done)} of {n_shards} "
            "shards done); pass --resume (resume=True) to finish it, or choose another output folder",
            [],
        )
    return None, done


class _ShardWriter(threading.Thread):
    """Background writing: this thread gathers each shard's batches and quantises their maps; a small
    thread pool compresses and writes finished shards (zlib releases the GIL, so several shards
    compress at once and a fast GPU is not held back by one core's deflate speed)."""

    def __init__(
        self,
        out: Path,
        sizes: Dict[int, int],
        map_shape: Tuple[int, int],
        source: _Source,
        overlays: bool,
        metric_fields: Sequence[str],
        threads: int = 2,
    ) -> None:
        super().__init__(name="pytorch_cam-shard-writer", daemon=True)
        self.out = out
        self.sizes = sizes
        self.map_shape = map_shape
        self.source = source
        self.overlays = overlays
        self.metric_fields = list(metric_fields)
        self.queue: queue.Queue = queue.Queue(maxsize=8)  # batches waiting: bounds the memory they hold
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pytorch_cam-shard-io")
        self.slots = threading.BoundedSemaphore(threads + 1)  # finished shards waiting for the pool
        self.futures: List[Future] = []
        self.error: Optional[BaseException] = None
        self.pending: Dict[int, List[Dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.written = 0
        env = os.environ.get(KILL_AFTER_SHARDS_ENV, "")
        self.kill_after = int(env) if env.isdigit() else None

    def _raise(self) -> None:
        error = self.error or next((f.exception() for f in self.futures if f.done() and f.exception()), None)
        if error is not None:
            raise RuntimeError(f"writing the results failed: {_error_text(error)}") from error

    def put(self, item: Dict[str, Any]) -> None:
        self._raise()
        self.queue.put(item)

    def close(self) -> None:
        self.queue.put(None)
        self.join()
        self.pool.shutdown(wait=True)
        self._raise()

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # keep draining so the model loop never blocks on a full queue
            try:
                self._add(item)
            except BaseException as e:  # reported to the main thread at its next put/close
                self.error = e

    def _add(self, item: Dict[str, Any]) -> None:
        # round to the nearest of 256 levels: |error| <= 1/510
        item["maps"] = np.rint(np.clip(item["maps"], 0.0, 1.0) * MAP_SCALE).astype(np.uint8)
        shard = item["shard"]
        parts = self.pending.setdefault(shard, [])
        parts.append(item)
        if sum(len(p["index"]) for p in parts) == self.sizes[shard]:
            self.slots.acquire()
            future = self.pool.submit(self._write, shard, self.pending.pop(shard))
            future.add_done_callback(lambda _f: self.slots.release())
            self.futures.append(future)

    def _write(self, shard: int, parts: List[Dict[str, Any]]) -> None:
        index = np.concatenate([p["index"] for p in parts])
        ok = np.concatenate([p["ok"] for p in parts])
        n = len(index)
        maps = np.zeros((n, *self.map_shape), np.uint8)
        rows = np.flatnonzero(ok)
        if rows.size:
            maps[rows] = np.concatenate([p["maps"] for p in parts if len(p["maps"])])
        keys = [self.source.keys[i] for i in index]
        arrays = {
            "keys": np.asarray(keys, dtype=str),
            "index": index.astype(np.int64),
            "maps": maps,
            "target": np.concatenate([p["target"] for p in parts]).astype(np.int64),
            "score": np.concatenate([p["score"] for p in parts]).astype(np.float32),
            "status": np.where(ok, "ok", "error"),
            "error": np.asarray([e for p in parts for e in p["error"]], dtype=str),
            "size": np.concatenate([p["size"] for p in parts]).astype(np.int64).reshape(n, 2),
            "label": np.concatenate([p["label"] for p in parts]).astype(np.int64),
        }
        for name in self.metric_fields:
            arrays[name] = np.concatenate([p["metrics"][name] for p in parts]).astype(np.float32)
        if self.overlays:
            for r in rows:
                self._overlay(keys[r], int(index[r]), maps[r])
        # The shard file goes last: its presence means the shard, overlays included, is complete.
        _atomic_write(self.out / _shard_name(shard), lambda f: np.savez_compressed(f, **arrays))
        with self.lock:
            self.written += 1
            if self.kill_after is not None and self.written >= self.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: crash right after a shard

    def _overlay(self, key: str, index: int, q: np.ndarray) -> None:
        import cv2

        assert self.source.paths is not None
        try:
            rgb, (h, w) = _read_rgb(self.source.paths[index])
        except Exception:  # the file changed since the loader read it: no overlay, the map stands
            return
        m = cv2.resize(q.astype(np.float32) / MAP_SCALE, (w, h), interpolation=cv2.INTER_LINEAR)
        # PIL decodes RGB, cv2.imencode writes BGR: blend in RGB, then reorder once for the file.
        overlay = show_cam_on_image(np.asarray(rgb, np.float32) / 255.0, np.clip(m, 0.0, 1.0), use_rgb=True)
        ok, png = cv2.imencode(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"could not encode the overlay of {key!r}")
        _atomic_write(self.out / _overlay_name(key), lambda f: f.write(png.tobytes()))


# ------------------------------------------------------------------------------------ the run
def _logits(cam: Any, x: torch.Tensor, aug_smooth: bool) -> torch.Tensor:
    """The classifier scores (B, K) of the images the CAM just explained."""
    out = None if aug_smooth else primary_output(getattr(cam, "outputs", None))
    if not (torch.is_tensor(out) and out.ndim == 2 and out.shape[0] == x.shape[0]):
        # Methods whose last forward was not the images' own (SESS scores patches; aug_smooth
        # ends on a transformed copy): one extra plain forward gives the images' scores.
        run_model = getattr(cam, "run_model", None)
        with torch.no_grad(), eval_mode(cam.model):
            out = run_model(x) if run_model is not None else cam.model(x)
    return _class_scores(out).detach().float()


def _class_scores(out: Any) -> torch.Tensor:
    """The (batch, classes) scores in a model's output (``primary_output``), or the error saying why not."""
    out = primary_output(out)
    if not (torch.is_tensor(out) and out.ndim == 2):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ExplainError(f"explain_dataset explains classifiers, whose output is (batch, classes); got {shape}")
    return out


def _num_classes(cam: Any, source: _Source, device: torch.device) -> int:
    """One dry forward on a blank input: the class count, and an early, clear error for a wrong input size."""
    if isinstance(source.items, ImageFiles):
        shape: Tuple[int, ...] = (3, *source.map_shape)
    else:
        shape = source.items.image_shape  # type: ignore[attr-defined]
    x = torch.zeros(1, *shape, device=device)
    try:
        with torch.no_grad(), eval_mode(cam.model):
            out = cam.model(x)
    except Exception as e:
        raise ExplainError(
            f"the model does not take {tuple(x.shape[1:])} inputs ({_error_text(e)}); choose an input size it accepts"
        ) from None
    return int(_class_scores(out).shape[1])


def _metric_values(
    cam: Any, x: torch.Tensor, maps: np.ndarray, classes: torch.Tensor, metrics: Sequence[str]
) -> Dict[str, torch.Tensor]:
    from pytorch_cam import metrics as M

    out: Dict[str, torch.Tensor] = {}
    if "confidence" in metrics:
        out["confidence_change"] = M.confidence_change(cam.model, x, maps, classes)
    if "road" in metrics:
        combined, morf, lerf = M.road_score(cam.model, x, maps, classes)
        out.update(road=combined, road_morf=morf, road_lerf=lerf)
    return out


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ExplainError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def explain_dataset(
    cam: Any,
    dataset_or_loader: Union[str, os.PathLike, Dataset, DataLoader],
    out_dir: Union[str, os.PathLike],
    *,
    targets: TargetsSpec = "top1",
    batch_size: Optional[int] = None,
    num_workers: Optional[int] = None,
    input_size: int = 224,
    shard_size: int = 256,
    resume: bool = False,
    overlays: bool = False,
    metrics: Sequence[str] = (),
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    progress: Optional[bool] = None,
    run_info: Optional[Mapping[str, Any]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Explain every image of a folder (or Dataset) with ``cam`` and store the maps in ``out_dir``.

    Args:
        cam: a CAM object (``GradCAM(model, target_layers)``, ...), its model on the device to use.
        dataset_or_loader: an image folder (every image under it, keyed by its path relative to it;
            each squashed to ``input_size`` x ``input_size`` and normalised with ``mean``/``std``),
            a map-style Dataset giving normalised (C, H, W) float tensors of one size (or
            ``(image, label)``; a torchvision ImageFolder is keyed by its files' paths, others by
            index), or a DataLoader (its dataset, batch size and worker count are used; its
            sampler is not: the shards decide the order).
        out_dir: the output folder (see the module docstring for its layout).
        targets: ``"top1"`` (each image's top class), ``"label"`` (the class of its
            ``DIR/<class>/`` folder, or the Dataset's label), an int class for every image, or one
            class per image (a sequence in key order, or a mapping key -> class).
        batch_size: images per CAM call (default 32, or the DataLoader's).
        num_workers: DataLoader processes that decode and resize (default: the CPU cores per
            process on this machine, at most 4; 0 decodes in the main process).
        shard_size: images per shard file; the unit of resuming.
        resume: finish the unfinished run of the same options in ``out_dir``; finished shards are
            kept, the others redone. Without it an ``out_dir`` that holds a run is an error.
        overlays: also write ``overlays/<key>.png`` (the map over the photo at the photo's size).
        metrics: any of ``"confidence"`` (``pytorch_cam.metrics.confidence_change``) and
            ``"road"`` (``road_score``: ``road``, ``road_morf``, ``road_lerf``) per image, with
            their dataset means in ``summary.json``.
        progress: a tqdm bar on rank 0 (None: only when stderr is a terminal).
        run_info: extra settings recorded in ``run.json`` and compared on resume (the CLI passes
            ``--arch``/``--weights``).
        log: called on rank 0 with one-line status messages (e.g. ``print``).

    Returns the run's summary (the content of ``summary.json`` plus this call's timing), the same on
    every rank. Bad input raises :class:`ExplainError` before anything is written.
    """
    if not callable(cam) or not isinstance(getattr(cam, "model", None), nn.Module):
        raise ExplainError(f"cam must be a CAM object such as GradCAM(model, target_layers), got {type(cam).__name__}")
    out = Path(out_dir)
    shard_size = _check_positive("shard_size", shard_size)
    input_size = _check_positive("input_size", input_size)
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ExplainError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    device = torch.device(getattr(cam, "device", None) or next(cam.model.parameters()).device)
    d = init_distributed(device)
    filt = _RankLogs(d.rank)
    logger.addFilter(filt)
    say = log if (log is not None and d.rank == 0) else (lambda _msg: None)
    try:
        return _run(
            cam,
            dataset_or_loader,
            out,
            d,
            device,
            say,
            targets=targets,
            batch_size=batch_size,
            num_workers=num_workers,
            input_size=input_size,
            shard_size=shard_size,
            resume=resume,
            overlays=overlays,
            metrics=metrics,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            mean=mean,
            std=std,
            progress=progress,
            run_info=dict(run_info or {}),
        )
    finally:
        logger.removeFilter(filt)
        if d.created and dist.is_initialized():
            dist.destroy_process_group()


def _run(
    cam: Any, data: Any, out: Path, d: DistInfo, device: torch.device, say: Callable[[str], None], **o: Any
) -> Dict[str, Any]:
    # -- everything that can be wrong with the input, agreed by all ranks before anything is written
    error: Optional[str] = None
    try:
        if o["batch_size"] is not None:
            _check_positive("batch_size", o["batch_size"])
        source = _source(data, o["input_size"], o["targets"] == "label", out, o["batch_size"], o["num_workers"])
        batch_size = _check_positive("batch_size", source.batch_size if source.batch_size is not None else 32)
        n = len(source.keys)
        targets_option, fixed_classes = _targets_option(o["targets"], n, source.keys)
        if o["overlays"] and source.paths is None:
            raise ExplainError("overlays need image files: pass an image folder or a dataset with .samples paths")
        n_classes = _num_classes(cam, source, device)
        if fixed_classes is not None and fixed_classes.max() >= n_classes:
            raise ExplainError(
                f"target class {int(fixed_classes.max())} is outside the model's {n_classes} classes "
                f"(valid: 0..{n_classes - 1})"
            )
        if source.labels is not None and max(source.labels) >= n_classes:
            raise ExplainError(
                f"the folders of {source.describe!r} name {len(source.classes or [])} classes (up to class "
                f"{max(source.labels)}), but the model has {n_classes} outputs"
            )
        if device.type == "cuda" and _world(d):
            where = _gather(d, (socket.gethostname(), str(device)))
            if len(set(where)) < len(where):
                raise ExplainError(
                    f"several processes on one machine use {device}; put each process's model on "
                    "cuda:LOCAL_RANK (torch.device('cuda', int(os.environ['LOCAL_RANK'])))"
                )
        options = {
            "method": type(cam).__name__,
            "cam": _cam_options(cam),
            "target_layers": _layer_names(cam),
            "model": type(cam.model).__name__,
            "weights": _model_fingerprint(cam.model),
            "device": device.type,
            "targets": targets_option,
            "batch_size": batch_size,
            "shard_size": o["shard_size"],
            "input_size": list(source.map_shape),
            "normalise": None if source.items.normalised else [list(map(float, o["mean"])), list(map(float, o["std"]))],
            "aug_smooth": bool(o["aug_smooth"]),
            "eigen_smooth": bool(o["eigen_smooth"]),
            "overlays": bool(o["overlays"]),
            "metrics": o["metrics"],
            "dataset": {
                "images": n,
                "keys": hashlib.blake2b("\n".join(source.keys).encode(), digest_size=12).hexdigest(),
            },
            **{k: v for k, v in o["run_info"].items()},
        }
    except ExplainError as e:
        error = str(e)
    error = agree_on_error(d, error)
    if error is not None:
        raise ExplainError(error, all_ranks=True)

    n_shards = math.ceil(n / o["shard_size"])
    run = {"format": FORMAT, "options": options, "shards": n_shards, "classes": source.classes}
    if d.rank == 0:
        error, done = _check_out_dir(out, run, o["resume"])
        if error is None:
            try:
                (out / "shards").mkdir(parents=True, exist_ok=True)
                _remove_temp_files(out)
                if not (out / "run.json").exists():
                    _write_json(out / "run.json", run)
            except OSError as e:
                error = f"cannot write to the output folder {str(out)!r}: {e.strerror or e}"
        plan = (error, done)
    else:
        plan = None
    error, done = _broadcast(d, plan)
    if error is not None:
        raise ExplainError(error, all_ranks=True)

    finished_before = (out / "manifest.json").exists()
    finished = set(done)
    todo = [j for j in range(n_shards) if j not in finished]
    mine = todo[d.rank :: d.world_size]
    shard_sizes = {j: min(n, (j + 1) * o["shard_size"]) - j * o["shard_size"] for j in range(n_shards)}
    to_do_images = sum(shard_sizes[j] for j in todo)
    say(
        f"explaining {n} images of {source.describe} with {type(cam).__name__} on {device.type}"
        + (f", {d.world_size} processes" if _world(d) else "")
        + f": {n_shards} shard(s) of {o['shard_size']}"
        + (f", {len(done)} done before, {len(todo)} to do" if done else "")
    )
    metric_fields = [f for m in o["metrics"] for f in METRICS[m]]
    start = time.perf_counter()
    mine_images = _explain_shards(
        cam,
        source,
        out,
        d,
        device,
        mine,
        shard_sizes,
        batch_size,
        n_classes,
        fixed_classes,
        metric_fields,
        to_do_images,
        o,
    )
    seconds = time.perf_counter() - start

    # -- every shard is on disk: counts and metric means over all of them (earlier runs' too), all-reduced
    _barrier(d)
    stats = _shard_stats(out, list(range(n_shards))[d.rank :: d.world_size], metric_fields)
    sums = _all_sum(
        d,
        [
            stats["ok"],
            stats["error"],
            *[stats["sum"][f] for f in metric_fields],
            *[stats["count"][f] for f in metric_fields],
            float(mine_images),
        ],
    )
    ok, errors, done_images = int(sums[0]), int(sums[1]), sums[-1]
    k = len(metric_fields)
    means = {f: (sums[2 + i] / sums[2 + k + i] if sums[2 + k + i] else None) for i, f in enumerate(metric_fields)}
    first_errors = sorted(e for part in _gather(d, stats["first_errors"]) for e in part)[:5]
    summary = {
        "format": FORMAT,
        "images": n,
        "ok": ok,
        "errors": errors,
        "first_errors": [list(e) for e in first_errors],
        "metrics": means,
        "map": {"dtype": "uint8", "shape": list(source.map_shape), "scale": MAP_SCALE},
        "bytes_per_map": int(np.prod(source.map_shape)),
    }
    if d.rank == 0 and not finished_before:
        manifest = {
            **run,
            "map": summary["map"],
            "images": n,
            "ok": ok,
            "errors": errors,
            "shard_files": [_shard_name(j) for j in range(n_shards)],
            "shard_images": [shard_sizes[j] for j in range(n_shards)],
        }
        _write_json(out / "summary.json", summary)
        _write_json(out / "manifest.json", manifest)  # last: its presence marks the run finished
    _barrier(d)  # no rank returns before the manifest exists
    return {
        **summary,
        "out_dir": str(out),
        "shards": n_shards,
        "shards_done_before": len(done),
        "explained_now": int(done_images),
        "seconds": seconds,
        "images_per_s": done_images / seconds if seconds > 0 else 0.0,
        "world_size": d.world_size,
    }


def _explain_shards(
    cam: Any,
    source: _Source,
    out: Path,
    d: DistInfo,
    device: torch.device,
    shards: List[int],
    shard_sizes: Dict[int, int],
    batch_size: int,
    n_classes: int,
    fixed_classes: Optional[np.ndarray],
    metric_fields: List[str],
    total: int,
    o: Dict[str, Any],
) -> int:
    """Run this rank's shards; returns how many images it explained."""
    # Batches never cross a shard boundary and always start at the shard's first image: the same
    # batches whatever the number of processes, and whether or not the shard is redone after a kill.
    batches = []
    owner = []
    for j in shards:
        lo = j * o["shard_size"]
        hi = lo + shard_sizes[j]
        for b in range(lo, hi, batch_size):
            batches.append(list(range(b, min(hi, b + batch_size))))
            owner.append(j)
    if not batches:
        return 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = max(1, (os.cpu_count() or 1) // max(1, local))  # this process's share of the machine
    workers = o["num_workers"] if o["num_workers"] is not None else source.num_workers
    if workers is None:
        workers = min(4, cores)
    loader = DataLoader(
        source.items,
        batch_sampler=batches,
        num_workers=int(workers),
        collate_fn=collate_items,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    normalise = not source.items.normalised
    mean_t = torch.tensor(list(o["mean"]), dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    std_t = torch.tensor(list(o["std"]), dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    writer = _ShardWriter(
        out, shard_sizes, source.map_shape, source, o["overlays"], metric_fields, threads=min(4, cores)
    )
    writer.start()
    bar = None
    if d.rank == 0:
        from tqdm.auto import tqdm

        disable = None if o["progress"] is None else not o["progress"]
        # Rank 0 sees its own batches only: it counts them times the number of ranks (an estimate
        # of the whole run's rate and ETA, exact for one process).
        bar = tqdm(total=total, unit="img", desc=f"{type(cam).__name__}", disable=disable, dynamic_ncols=True)
    done = 0
    try:
        for batch, shard in zip(loader, owner):
            index = batch["index"].numpy()
            ok = batch["ok"].numpy().copy()
            errors = list(batch["error"])
            b = len(index)
            target = np.full(b, -1, np.int64)
            score = np.full(b, np.nan, np.float32)
            label = batch["label"].numpy()
            metric_values = {f: np.full(b, np.nan, np.float32) for f in metric_fields}
            # the class asked for each image (None: its top class)
            want: Optional[np.ndarray] = None
            if fixed_classes is not None:
                want = fixed_classes[index]
            elif o["targets"] == "label":
                want = label
                bad = ok & ((label < 0) | (label >= n_classes))
                for r in np.flatnonzero(bad):
                    errors[r] = (
                        f"label {label[r]} is outside the model's {n_classes} classes"
                        if label[r] >= 0
                        else "the dataset gives no label for this image"
                    )
                if bad.any():
                    keep = ~bad[ok]  # rows of the stacked images to keep
                    batch["image"] = batch["image"][torch.from_numpy(keep)] if keep.any() else None
                    ok &= ~bad
            rows = np.flatnonzero(ok)
            maps = np.zeros((0, *source.map_shape), np.float32)
            if rows.size:
                x = batch["image"].to(device, non_blocking=True)
                if normalise:
                    x = (x.float().div_(255.0) - mean_t) / std_t
                cam_targets = None if want is None else [ClassifierOutputTarget(c) for c in want[rows].tolist()]
                maps = cam(x, targets=cam_targets, aug_smooth=o["aug_smooth"], eigen_smooth=o["eigen_smooth"])
                if torch.is_tensor(maps):
                    maps = maps.detach().float().cpu().numpy()
                logits = _logits(cam, x, o["aug_smooth"])
                classes = logits.argmax(dim=1) if want is None else torch.as_tensor(want[rows], device=logits.device)
                scores = logits.gather(1, classes[:, None])[:, 0]
                target[rows] = classes.cpu().numpy()
                score[rows] = scores.cpu().numpy()
                if metric_fields:
                    values = _metric_values(cam, x, maps, classes, o["metrics"])
                    for f, v in values.items():
                        metric_values[f][rows] = v.detach().float().cpu().numpy()
            writer.put(
                {
                    "shard": shard,
                    "index": index,
                    "ok": ok,
                    "maps": np.asarray(maps, np.float32),
                    "target": target,
                    "score": score,
                    "error": [e if not k else "" for e, k in zip(errors, ok)],
                    "size": batch["size"].numpy(),
                    "label": label,
                    "metrics": metric_values,
                }
            )
            done += b
            if bar is not None:
                bar.update(min(b * d.world_size, total - bar.n))
        writer.close()
    finally:
        if writer.is_alive():
            writer.queue.put(None)
        if bar is not None:
            if bar.n < total:
                bar.update(total - bar.n)
            bar.close()
    return done


def _shard_stats(out: Path, shards: List[int], metric_fields: List[str]) -> Dict[str, Any]:
    """Counts, metric sums and the first errors of some shard files (their maps are not read)."""
    stats: Dict[str, Any] = {
        "ok": 0.0,
        "error": 0.0,
        "sum": dict.fromkeys(metric_fields, 0.0),
        "count": dict.fromkeys(metric_fields, 0.0),
        "first_errors": [],
    }
    for j in shards:
        with np.load(out / _shard_name(j)) as z:
            ok = z["status"] == "ok"
            stats["ok"] += float(ok.sum())
            stats["error"] += float((~ok).sum())
            if (~ok).any() and len(stats["first_errors"]) < 5:
                keys, errs = z["keys"], z["error"]
                stats["first_errors"] += [(str(keys[i]), str(errs[i])) for i in np.flatnonzero(~ok)[:5]]
            for f in metric_fields:
                v = z[f][ok].astype(np.float64)
                v = v[np.isfinite(v)]
                stats["sum"][f] += float(v.sum())
                stats["count"][f] += float(v.size)
    return stats


# ------------------------------------------------------------------------------------ reading
def _run_files(out_dir: Union[str, os.PathLike], partial: bool) -> Tuple[Path, Dict[str, Any], List[str]]:
    out = Path(out_dir)
    manifest = out / "manifest.json"
    if manifest.is_file():
        m = _read_json(manifest)
        return out, m, list(m["shard_files"])
    if (out / "run.json").is_file():
        run = _read_json(out / "run.json")
        files = [_shard_name(j) for j in range(run["shards"])]
        present = [f for f in files if (out / f).is_file()]
        if partial:
            return out, run, present
        raise ExplainError(
            f"{str(out)!r} holds an unfinished run ({len(present)} of {len(files)} shards); finish it with --resume "
            "(resume=True), or pass partial=True to read the finished shards"
        )
    raise ExplainError(f"{str(out)!r} holds no explain_dataset results (no manifest.json)")


def _records(z: Any, fields: Sequence[str]) -> Iterator[Tuple[str, Dict[str, Any]]]:
    keys, maps, status = z["keys"], z["maps"], z["status"]
    cols = {f: z[f] for f in ("target", "score", "error", "size", "label", *fields)}
    for i, key in enumerate(keys.tolist()):
        ok = status[i] == "ok"
        rec: Dict[str, Any] = {
            "map": maps[i].astype(np.float32) / np.float32(MAP_SCALE) if ok else None,
            "target": int(cols["target"][i]),
            "score": float(cols["score"][i]),
            "status": "ok" if ok else "error",
            "error": str(cols["error"][i]),
            "size": tuple(int(v) for v in cols["size"][i]),
            "label": int(cols["label"][i]),
        }
        for f in fields:
            rec[f] = float(cols[f][i])
        yield key, rec


def _metric_fields(meta: Dict[str, Any]) -> List[str]:
    return [f for m in meta["options"].get("metrics", []) for f in METRICS.get(m, ())]


def load_results(
    out_dir: Union[str, os.PathLike], *, lazy: bool = False, partial: bool = False
) -> Union[Dict[str, Dict[str, Any]], LazyResults]:
    """The records of an ``explain_dataset`` run: ``{key: record}`` in key order.

    A record holds ``map`` (float32 (H, W) in [0, 1], the stored 8-bit map / 255; None when the
    image could not be read), ``target`` (the explained class; -1 on error), ``score`` (the
    model's logit for it; NaN on error), ``status`` (``"ok"`` or ``"error"``), ``error`` (why, or
    ""), ``size`` (the image's own (H, W): ``cv2.resize(map, size[::-1])`` puts the map back on
    it), ``label`` (the dataset's, or -1) and, with ``metrics=``, one float per metric field.

    All maps in memory take 4 x H x W bytes each (200 kB at 224 x 224): for large runs pass
    ``lazy=True`` for a read-only mapping that reads one shard at a time. ``partial=True`` reads
    the finished shards of an unfinished run.
    """
    out, meta, files = _run_files(out_dir, partial)
    if lazy:
        return LazyResults(out, files, _metric_fields(meta))
    fields = _metric_fields(meta)
    results: Dict[str, Dict[str, Any]] = {}
    for f in files:
        with np.load(out / f) as z:
            results.update(_records(z, fields))
    return results


class LazyResults(Mapping):
    """``load_results(..., lazy=True)``: records read from their shard on access (one shard cached).

    Iterating (``items()``, ``values()``) goes shard by shard, so each shard is read once.
    """

    def __init__(self, out: Path, files: List[str], fields: List[str]) -> None:
        self._out = out
        self._files = files
        self._fields = fields
        self._where: Dict[str, Tuple[int, int]] = {}
        for s, f in enumerate(files):
            with np.load(out / f) as z:
                for i, key in enumerate(z["keys"].tolist()):
                    self._where[key] = (s, i)
        self._cached: Tuple[int, List[Tuple[str, Dict[str, Any]]]] = (-1, [])

    def _shard(self, s: int) -> List[Tuple[str, Dict[str, Any]]]:
        if self._cached[0] != s:
            with np.load(self._out / self._files[s]) as z:
                self._cached = (s, list(_records(z, self._fields)))
        return self._cached[1]

    def __getitem__(self, key: str) -> Dict[str, Any]:
        s, i = self._where[key]
        return self._shard(s)[i][1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
