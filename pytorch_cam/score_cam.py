"""Score-CAM, with CSKIP channel skipping.

Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
Networks", CVPR Workshops 2020. https://arxiv.org/abs/1910.01279

Gradient-free. Each activation channel A_c is upsampled to the input size and min-max
normalised to [0, 1], giving a mask M_c; the masked input X * M_c is scored by the model:

    s_c = y(X * M_c)               (the target's score, e.g. the class logit)
    w   = softmax_c(s)             (over the scored channels)
    L   = ReLU(sum_c w_c A_c)

CSKIP (``cskip=K``): per image, only the K channels with the largest maximum activation
(``cskip_rank="max"``) or standard deviation (``"std"``) are scored; the softmax runs over
those K and every other channel gets weight 0. ``K`` may be an int or a ratio in (0, 1];
``K >= C`` reproduces the vanilla map exactly. Run time falls linearly with K.

Speed (the map is unchanged by all of these): masked inputs are built chunk by chunk, so memory
is bounded by ``batch_size`` and not by the channel count; pairs of several images share a
forward pass; ``batch_size="auto"`` (the default) times a few chunk sizes on the first chunks
and keeps the fastest for the rest (and for later calls with the same input shape). A constant
channel (e.g. all zeros after a ReLU) gives an all-zero mask, whose masked input is the same
for every image, so it is scored once per call; channels with identical activations within an
image give identical masks and are scored once. "Unchanged" is up to float rounding: CPU
convolutions round differently at different batch sizes (~1e-6 on the map), so pass an int
``batch_size`` when two runs must agree bit for bit.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn

from pytorch_cam.base_cam import BaseCAM, min_max_scale, resize_maps


def _resolve_cskip(cskip: Union[int, float, None], channels: int) -> int:
    if cskip is None:
        return channels
    if isinstance(cskip, bool):
        raise TypeError("cskip must be an int channel count, a float ratio in (0, 1], or None")
    if isinstance(cskip, float):
        if not 0.0 < cskip <= 1.0:
            raise ValueError(f"cskip as a ratio must be in (0, 1], got {cskip}")
        return max(1, math.ceil(cskip * channels))
    if isinstance(cskip, int):
        if cskip < 1:
            raise ValueError(f"cskip must keep at least one channel, got {cskip}")
        return min(cskip, channels)
    raise TypeError(f"cskip must be an int, a float ratio or None, got {type(cskip).__name__}")


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pair_chunks(
    cam: Any, keep: torch.Tensor, key: Any, pixels: int = 224 * 224
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Chunks of (image, channel) index pairs where ``keep`` (B, C) is True, for ``cam``.

    With an int ``cam.batch_size`` the chunks have that size. With ``"auto"`` the first chunks
    probe a few sizes (``auto_candidates``, after one warm-up chunk): the time between handing out a chunk and being
    asked for the next one is what the caller spent on it, so the per-pair time of each size is
    measured on real work, nothing is thrown away, and the fastest size is used for the rest.
    The choice is remembered in ``cam._auto_batch[key]``.
    """
    b_idx, c_idx = keep.nonzero(as_tuple=True)
    total = b_idx.numel()
    check_batch_size(cam.batch_size)
    cache: Dict[Any, int] = cam.__dict__.setdefault("_auto_batch", {})
    if cam.batch_size != "auto":
        fixed: Optional[int] = cam.batch_size
    else:
        fixed = cache.get(key)
    bar = cam._progress(None, total=total, desc=type(cam).__name__) if cam.progress else None
    start = 0
    try:
        if fixed is None:
            candidates = list(auto_candidates(keep.device, pixels))
            # Probe only sizes the work can fill, so a small call still settles on a size.
            while len(candidates) > 1 and min(candidates) + sum(candidates) > total:
                candidates.pop()
            plan = [min(candidates)] + list(candidates)  # the first chunk only warms up
            per_pair: Dict[int, float] = {}
            for i, size in enumerate(plan):
                if start >= total:
                    break
                _sync(keep.device)
                t0 = time.perf_counter()
                stop = min(start + size, total)
                yield b_idx[start:stop], c_idx[start:stop]
                _sync(keep.device)
                if i > 0 and stop - start == size:
                    per_pair[size] = (time.perf_counter() - t0) / size
                if bar is not None:
                    bar.update(stop - start)
                start = stop
            if per_pair and len(per_pair) == len(candidates):
                fixed = min(per_pair, key=per_pair.__getitem__)
                cache[key] = fixed
            else:
                fixed = min(per_pair, key=per_pair.__getitem__) if per_pair else max(candidates)
        while start < total:
            stop = min(start + fixed, total)
            yield b_idx[start:stop], c_idx[start:stop]
            if bar is not None:
                bar.update(stop - start)
            start = stop
    finally:
        if bar is not None:
            bar.close()


def unique_rows(flat: torch.Tensor, keep: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deduplicate the kept channels of each image by exact equality of their activations.

    ``flat`` is (B, C, N). Returns (``rep_keep`` (B, C): one representative per distinct kept
    channel, ``pair_b``/``pair_c``: every kept pair, ``rep_of``: index into the kept pairs of
    each pair's representative).
    """
    pair_b, pair_c = keep.nonzero(as_tuple=True)
    n = pair_b.numel()
    if n == 0:
        return keep.clone(), torch.stack([pair_b, pair_c]), pair_b
    rows = flat[pair_b, pair_c]
    # The image index leads each row, so only channels of the same image can merge.
    keyed = torch.cat([pair_b[:, None].to(rows.dtype), rows], dim=1)
    _, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long, device=keep.device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=keep.device), reduce="amin")
    rep_keep = torch.zeros_like(keep)
    rep_keep[pair_b[first], pair_c[first]] = True
    return rep_keep, torch.stack([pair_b, pair_c]), first[inverse]


def top_channels(activations: torch.Tensor, k: int, rank: str = "max") -> torch.Tensor:
    """Boolean (B, C) mask of each image's ``k`` highest-ranked channels."""
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


class ScoreCAM(BaseCAM):
    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers,
        reshape_transform=None,
        batch_size: Union[int, str] = "auto",
        cskip: Union[int, float, None] = None,
        cskip_rank: str = "max",
        progress: bool = True,
        device=None,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform=reshape_transform,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        check_batch_size(batch_size)
        _resolve_cskip(cskip, 1)  # validate early
        if cskip_rank not in ("max", "std"):
            raise ValueError(f"cskip_rank must be 'max' or 'std', got {cskip_rank!r}")
        self.cskip = cskip
        self.cskip_rank = cskip_rank

    def channels_to_score(self, activations: torch.Tensor) -> torch.Tensor:
        """(B, C) boolean mask of the channels to score (all, unless CSKIP)."""
        k = _resolve_cskip(self.cskip, activations.shape[1])
        return top_channels(activations, k, self.cskip_rank)

    def score_masks(
        self, input_tensor: torch.Tensor, activations: torch.Tensor, keep: torch.Tensor, targets: list
    ) -> torch.Tensor:
        """Target score (B, C) of the input masked by each kept channel; -inf elsewhere."""
        b, c = activations.shape[:2]
        size = input_tensor.shape[2:]
        flat = activations.reshape(b, c, -1)
        constant = flat.amax(dim=-1) == flat.amin(dim=-1)
        scores = torch.full((b, c), float("-inf"), device=activations.device)
        with torch.inference_mode():
            if bool((keep & constant).any()):
                zero_out = self.model(torch.zeros_like(input_tensor[:1]))
                zero_scores = self._score_rows(
                    zero_out.expand(b, *zero_out.shape[1:]), targets, torch.arange(b, device=zero_out.device)
                )
                scores = torch.where(keep & constant, zero_scores[:, None].to(scores.dtype), scores)
            rep_keep, pairs, rep_of = unique_rows(flat, keep & ~constant)
            key = ("score", tuple(input_tensor.shape[1:]), input_tensor.dtype)
            for b_idx, c_idx in self._pair_chunks(rep_keep, key, math.prod(size)):
                masks = min_max_scale(resize_maps(activations[b_idx, c_idx], size))
                variants = self.perturbed_inputs(input_tensor[b_idx], masks[:, None].to(input_tensor.dtype))
                total = None
                for variant in variants:
                    s = self._score_rows(self.model(variant), targets, b_idx).to(scores.dtype)
                    total = s if total is None else total + s
                scores[b_idx, c_idx] = total / len(variants)
            # Duplicate channels take their representative's score.
            scores[pairs[0], pairs[1]] = scores[pairs[0][rep_of], pairs[1][rep_of]]
        return scores.clone()

    def _pair_chunks(self, keep: torch.Tensor, key: Any = None, pixels: int = 224 * 224) -> Iterator[tuple]:
        return pair_chunks(self, keep, key, pixels)

    def perturbed_inputs(self, inputs: torch.Tensor, masks: torch.Tensor) -> List[torch.Tensor]:
        """The inputs whose mean target score is a channel's score (extension point).

        ``inputs`` (k, C, *S) are the images, ``masks`` (k, 1, *S) the normalised channel masks of
        one chunk. Score-CAM scores ``inputs * masks`` once; variants such as SS-CAM and IS-CAM
        return several perturbed copies, each scored and averaged.
        """
        return [inputs * masks]

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> Optional[torch.Tensor]:
        keep = self.channels_to_score(activations)
        scores = self.score_masks(input_tensor, activations, keep, targets)
        return torch.softmax(scores, dim=1)
