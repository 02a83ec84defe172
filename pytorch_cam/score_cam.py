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
forward pass; ``batch_size="auto"`` (the default, see ``PerturbationCAM``) times a few chunk
sizes on the first chunks and keeps the fastest for the rest (and for later calls with the same
input shape). A constant
channel (e.g. all zeros after a ReLU) gives an all-zero mask, whose masked input is the same
for every image, so it is scored once per call; channels with identical activations within an
image give identical masks and are scored once. "Unchanged" is up to float rounding: CPU
convolutions round differently at different batch sizes (~1e-6 on the map), so pass an int
``batch_size`` when two runs must agree bit for bit.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from pytorch_cam.base_cam import LayerContext, logger, min_max_scale, resize_maps
from pytorch_cam.perturbation import DEFAULT_BATCH_SIZE, PerturbationCAM, top_channels

#: above this many scored inputs in one call, a warning suggests CSKIP
LONG_RUN_FORWARDS = 10_000


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


class ScoreCAM(PerturbationCAM, name="scorecam"):
    def __init__(
        self,
        model: nn.Module,
        target_layers,
        reshape_transform=None,
        batch_size: Union[int, str] = DEFAULT_BATCH_SIZE,
        cskip: Union[int, float, None] = None,
        cskip_rank: str = "max",
        progress: bool = True,
        device=None,
        **kwargs,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform=reshape_transform,
            batch_size=batch_size,
            device=device,
            progress=progress,
            **kwargs,
        )
        _resolve_cskip(cskip, 1)  # validate early
        if cskip_rank not in ("max", "std"):
            raise ValueError(f"cskip_rank must be 'max' or 'std', got {cskip_rank!r}")
        self.cskip = cskip
        self.cskip_rank = cskip_rank

    def channels_to_score(self, activations: torch.Tensor) -> torch.Tensor:
        """(B, C) boolean mask of the channels to score (all, unless CSKIP)."""
        c = activations.shape[1]
        if isinstance(self.cskip, int) and not isinstance(self.cskip, bool) and self.cskip >= c:
            logger.warning(
                "cskip=%d keeps all %d channels of the target layer, so this is full Score-CAM; pass a smaller K "
                "(e.g. cskip=16) to skip channels",
                self.cskip,
                c,
            )
        k = _resolve_cskip(self.cskip, c)
        return top_channels(activations, k, self.cskip_rank)

    def passes_per_channel(self) -> int:
        """Forward passes per scored channel (SS-CAM and IS-CAM score several perturbed copies)."""
        return 1

    def score_masks(
        self, input_tensor: torch.Tensor, activations: torch.Tensor, keep: torch.Tensor, targets: list
    ) -> torch.Tensor:
        """Target score (B, C) of the input masked by each kept channel; -inf elsewhere."""
        b, c = activations.shape[:2]
        size = input_tensor.shape[2:]
        flat = activations.reshape(b, c, -1)
        constant = flat.amax(dim=-1) == flat.amin(dim=-1)
        scores = torch.full((b, c), float("-inf"), device=activations.device)
        noise = self.noise_generator(input_tensor.device)
        with torch.inference_mode():
            if bool((keep & constant).any()):
                zero_out = self.run_model(torch.zeros_like(input_tensor[:1]))
                zero_scores = self.score_rows(
                    zero_out.expand(b, *zero_out.shape[1:]), targets, torch.arange(b, device=zero_out.device)
                )
                scores = torch.where(keep & constant, zero_scores[:, None].to(scores.dtype), scores)
            rep_keep, pairs, rep_of = unique_rows(flat, keep & ~constant)
            forwards = int(rep_keep.sum()) * self.passes_per_channel()
            if forwards > LONG_RUN_FORWARDS:
                logger.warning(
                    "%s will score about %d inputs (%d channel masks x %d); that takes a while on a CPU. For a "
                    "map in a fraction of the time, pass cskip=16 (score only each image's 16 strongest channels), "
                    "or run on a GPU with a larger batch_size",
                    type(self).__name__,
                    forwards,
                    int(rep_keep.sum()),
                    self.passes_per_channel(),
                )
            key = ("score", tuple(input_tensor.shape[1:]), input_tensor.dtype)
            for b_idx, c_idx, layout in self.pair_chunks(rep_keep, key, math.prod(size), input_tensor.ndim):
                masks = min_max_scale(resize_maps(activations[b_idx, c_idx], size))
                variants = self.perturbed_inputs(input_tensor[b_idx], masks[:, None].to(input_tensor.dtype), noise)
                total = None
                for variant in variants:
                    s = self.score_rows(self.run_model(variant, layout), targets, b_idx).to(scores.dtype)
                    total = s if total is None else total + s
                scores[b_idx, c_idx] = total / len(variants)
            # Duplicate channels take their representative's score.
            scores[pairs[0], pairs[1]] = scores[pairs[0][rep_of], pairs[1][rep_of]]
        return scores.clone()

    def noise_generator(self, device: torch.device) -> Optional[torch.Generator]:
        """The random generator handed to ``perturbed_inputs`` for one layer's scoring (None: not random)."""
        return None

    def perturbed_inputs(
        self, inputs: torch.Tensor, masks: torch.Tensor, generator: Optional[torch.Generator]
    ) -> List[torch.Tensor]:
        """The inputs whose mean target score is a channel's score (extension point).

        ``inputs`` (k, C, *S) are the images, ``masks`` (k, 1, *S) the normalised channel masks of
        one chunk, ``generator`` what ``noise_generator`` made for this layer. Score-CAM scores
        ``inputs * masks`` once; variants such as SS-CAM and IS-CAM return several perturbed
        copies, each scored and averaged.
        """
        return [inputs * masks]

    def layer_weights(self, ctx: LayerContext) -> torch.Tensor:
        keep = self.channels_to_score(ctx.activations)
        scores = self.score_masks(ctx.input_tensor, ctx.activations, keep, ctx.targets)
        return torch.softmax(scores, dim=1)
