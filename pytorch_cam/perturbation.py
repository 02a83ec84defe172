"""The base of the gradient-free methods that score perturbed inputs (Score-CAM and its variants, Ablation-CAM).

``PerturbationCAM`` owns what they share: ``batch_size`` (an int, or ``"auto"`` — the default for
all of them — which times a few chunk sizes on real work and keeps the fastest), the progress
bar, chunking (image, channel) pairs so that pairs of several images share a forward pass, the
target score of every output row, and channel ranking (CSKIP, ``ratio_channels_to_ablate``).
A method says how to score one chunk of pairs; the chunking does not change any map (up to float
rounding: CPU kernels round differently at different batch sizes, ~1e-6 on the map, so pass an
int ``batch_size`` when two runs must agree bit for bit).
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM, output_rows, target_scores
from pytorch_cam.utils.precision import check_memory_format

#: the batch_size every perturbation method defaults to
DEFAULT_BATCH_SIZE = "auto"


def check_batch_size(batch_size: Union[int, str]) -> None:
    if batch_size == "auto":
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")


def auto_candidates(device: torch.device, pixels: int) -> Tuple[int, ...]:
    """Chunk sizes that ``batch_size="auto"`` tries for inputs of ``pixels`` spatial elements.

    Small batches often win on CPUs for 224x224 inputs, large ones for small inputs; the largest
    candidate is capped so a chunk never holds more than about 16 images of 224x224 (CPU) or 128
    (GPU), which bounds the memory.
    """
    budget = (128 if device.type == "cuda" else 16) * 224 * 224
    largest = max(2, min(256, 2 ** int(math.log2(max(1, budget // max(1, pixels))))))
    smallest = 16 if device.type == "cuda" else 2
    sizes = [2**i for i in range(int(math.log2(smallest)), int(math.log2(largest)) + 1)]
    return tuple(sizes) if sizes else (largest,)


def probes_chunk_size(device: torch.device) -> bool:
    """Whether ``batch_size="auto"`` times candidate chunk sizes on ``device`` (see ``pair_chunks``).

    Not on a GPU: there throughput only rises with the batch up to the memory cap (measured on an
    H100, resnet18/50, fp32 and bf16, batches 16-256), while the first chunk of each new size pays
    cuDNN's per-shape setup (tens of ms, more than the chunk itself), which made a probe pick the
    smallest size: 5x slower than the largest for bf16 resnet18.
    """
    return device.type != "cuda"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def top_channels(activations: torch.Tensor, k: int, rank: str = "max") -> torch.Tensor:
    """Boolean (B, C) mask of each image's ``k`` highest-ranked channels (by max or std)."""
    b, c = activations.shape[:2]
    if k >= c:
        return torch.ones(b, c, dtype=torch.bool, device=activations.device)
    flat = activations.reshape(b, c, -1)
    if rank == "max":
        key = flat.amax(dim=-1)
    elif rank == "std":
        key = flat.float().std(dim=-1)
    else:
        raise ValueError(f"cskip_rank must be 'max' or 'std', got {rank!r}")
    keep = torch.zeros(b, c, dtype=torch.bool, device=activations.device)
    keep.scatter_(1, key.topk(k, dim=1).indices, True)
    return keep


def score_rows(outputs: Any, targets: Sequence, image_index: torch.Tensor) -> torch.Tensor:
    """Target score of each output row; row j belongs to image ``image_index[j]``."""
    return target_scores(targets, output_rows(outputs, image_index.numel()), image_index)


def check_ratio(ratio_channels_to_ablate: float) -> float:
    if not 0.0 < ratio_channels_to_ablate <= 1.0:
        raise ValueError(f"ratio_channels_to_ablate must be in (0, 1], got {ratio_channels_to_ablate}")
    return ratio_channels_to_ablate


def relative_drop(original: torch.Tensor, ablated: torch.Tensor) -> torch.Tensor:
    """Ablation weights (y - y_k) / y for original scores (B,) and ablated ones (B, C)."""
    original = original[:, None]
    safe = torch.where(original.abs() < 1e-12, torch.full_like(original, 1e-12), original)
    return ((original - ablated) / safe).clone()


class Chunk(NamedTuple):
    """One forward pass's worth of (image, channel) pairs, and the memory format of its input."""

    images: torch.Tensor
    channels: torch.Tensor
    memory_format: str


class PerturbationCAM(BaseCAM):
    """Base of the methods whose channel weights come from scoring perturbed inputs.

    Args (besides ``BaseCAM``'s):
        batch_size: (image, channel) pairs scored per forward pass; ``"auto"`` (the default)
            measures a few sizes on the first chunks and keeps the fastest for this CAM object.
        progress: show a tqdm bar while scoring.
        memory_format: layout of the scoring forwards' inputs: ``"auto"`` (the default: with
            ``batch_size="auto"``, channels-last where measured faster, see ``pair_chunks``),
            ``"contiguous"`` or ``"channels_last"``. The model is never changed; maps agree to
            float rounding.
        precision, detach, ...: see ``BaseCAM``.
    """

    uses_gradients = False
    batched = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Any = None,
        reshape_transform: Any = None,
        batch_size: Union[int, str] = DEFAULT_BATCH_SIZE,
        progress: bool = True,
        device: Any = None,
        memory_format: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform=reshape_transform, device=device, **kwargs)
        check_batch_size(batch_size)
        self.batch_size = batch_size
        self.progress = progress
        self.memory_format = check_memory_format(memory_format)
        #: chunk size chosen by batch_size="auto", per kind of work (see ``pair_chunks``)
        self.auto_batch_sizes: Dict[Any, int] = {}
        #: input memory format chosen by memory_format="auto", per kind of work
        self.auto_memory_formats: Dict[Any, str] = {}

    score_rows = staticmethod(score_rows)

    def channel_dim(self, raw: torch.Tensor, index: int) -> int:
        """The channel dimension of target layer ``index``'s raw output: 1, or the last one for token layouts."""
        return 1 if self.layer_reshape_transform(index) is None else raw.ndim - 1

    def fixed_chunk_size(self) -> Optional[int]:
        """The chunk size to use without timing (None: let ``"auto"`` measure). Override to pin it."""
        check_batch_size(self.batch_size)
        return None if self.batch_size == "auto" else int(self.batch_size)

    def pair_chunks(
        self, keep: torch.Tensor, key: Any, pixels: int = 224 * 224, layout_ndim: Optional[int] = None
    ) -> Iterator[Chunk]:
        """Chunks of (image, channel) index pairs where ``keep`` (B, C) is True, with the memory format to use.

        Pairs of different images share a chunk, so a batch of images is scored together and
        every forward pass is full. With ``batch_size="auto"`` the first chunks probe a few sizes
        (``auto_candidates``, after one warm-up chunk): the time between handing out a chunk and
        being asked for the next one is what the caller spent on it, so each size is measured on
        real work, nothing is thrown away, and the fastest size is used for the rest and
        remembered in ``auto_batch_sizes[key]``. On a GPU (``probes_chunk_size``) the largest
        candidate is taken without probing.

        ``layout_ndim`` is the number of dimensions of the tensor the caller feeds the model (4 or
        5 for images and convolutional activations). With ``memory_format="auto"`` and
        ``batch_size="auto"`` the next chunks then compare a channels-last input with the
        contiguous one the same way (after a channels-last warm-up, which pays for oneDNN's weight
        reorder; on a GPU each layout gets a warm-up chunk) and keep the faster, remembered in
        ``auto_memory_formats[key]``. An int ``batch_size`` keeps the contiguous layout
        (bit-for-bit reproducible maps) unless ``memory_format="channels_last"`` is asked for.
        """
        b_idx, c_idx = keep.nonzero(as_tuple=True)
        total = b_idx.numel()
        size = self.fixed_chunk_size()
        if size is None:
            size = self.auto_batch_sizes.get(key)
        fmt: Optional[str] = self.memory_format
        if fmt == "auto":
            if layout_ndim not in (4, 5) or self.batch_size != "auto":
                fmt = "contiguous"
            else:
                fmt = self.auto_memory_formats.get(key)
        bar = self._progress_bar(total)
        start = 0

        def one(chunk: int, layout: str, timed: bool = True) -> Iterator[Chunk]:
            """Hand out one chunk; returns the seconds per pair it took (None if it was not full or
            not ``timed``). Only timed chunks wait for the GPU: the others leave its queue running."""
            nonlocal start
            if timed:
                _sync(keep.device)
            t0 = time.perf_counter()
            stop = min(start + chunk, total)
            yield Chunk(b_idx[start:stop], c_idx[start:stop], layout)
            elapsed = None
            if timed and stop - start == chunk:
                _sync(keep.device)
                elapsed = (time.perf_counter() - t0) / chunk
            if bar is not None:
                bar.update(stop - start)
            start = stop
            return elapsed

        try:
            per_pair: Dict[int, float] = {}
            # Where sizes are not probed, every layout gets a warm-up chunk before it is timed.
            warm_both = not probes_chunk_size(keep.device)
            if size is None and warm_both:
                size = auto_candidates(keep.device, pixels)[-1]
                self.auto_batch_sizes[key] = size
            if size is None:
                candidates = list(auto_candidates(keep.device, pixels))
                # Probe only sizes the work can fill, so a small call still settles on a size.
                while len(candidates) > 1 and min(candidates) + sum(candidates) > total:
                    candidates.pop()
                plan = [min(candidates)] + list(candidates)  # the first chunk only warms up
                for i, chunk in enumerate(plan):
                    if start >= total:
                        break
                    took = yield from one(chunk, fmt or "contiguous", timed=i > 0)
                    if i > 0 and took is not None:
                        per_pair[chunk] = took
                size = min(per_pair, key=per_pair.__getitem__) if per_pair else max(candidates)
                if per_pair and len(per_pair) == len(candidates):
                    self.auto_batch_sizes[key] = size
            if fmt is None:
                fmt = "contiguous"
                if total - start >= (4 if warm_both else 3) * size:
                    base = per_pair.get(size)
                    if base is None:
                        if warm_both:
                            yield from one(size, "contiguous", timed=False)
                        base = yield from one(size, "contiguous")
                    yield from one(size, "channels_last", timed=False)  # warm-up
                    cl = yield from one(size, "channels_last")
                    if base is not None and cl is not None:
                        # A small margin keeps the exact contiguous layout when the two are a tie.
                        fmt = "channels_last" if cl < 0.97 * base else "contiguous"
                        self.auto_memory_formats[key] = fmt
            while start < total:
                yield from one(size, fmt, timed=False)
        finally:
            if bar is not None:
                bar.close()

    def _progress_bar(self, total: int) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=type(self).__name__, leave=False)
