"""Reshape transforms for vision transformers: token or channels-last outputs -> (B, C, H, W).

CAM methods need activations laid out as (B, C, H, W). Transformer blocks produce something else:

* ViT / DeiT (torchvision, timm): tokens (B, N, C), where the first ``p`` tokens are class,
  distillation or register tokens and the remaining ``N - p`` form the patch grid ``h x w``.
* Swin (torchvision, timm >= 0.9): channels-last feature maps (B, H, W, C); older timm Swin: tokens
  (B, H*W, C) without prefix tokens.

The transforms here infer the grid from the tensor and the input's spatial size, so the common case
needs no arguments::

    cam = GradCAM(model, [model.blocks[-1].norm1], reshape_transform=vit_reshape_transform)

``BaseCAM`` passes ``input_size=(H, W)`` to any transform whose signature accepts an
``input_size`` keyword; a one-argument ``transform(tensor)`` (the pytorch-grad-cam style) is
called as before. Explicit values are accepted as in pytorch-grad-cam,
``vit_reshape_transform(tensor, height, width)`` (``functools.partial(vit_reshape_transform,
height=16, width=16)``), and for the rare ambiguous prefix count via
``functools.partial(vit_reshape_transform, num_prefix_tokens=2)`` or the factories
``make_vit_reshape_transform(...)`` / ``make_swin_reshape_transform(...)``.

How the grid is inferred from N tokens and an input of H x W pixels: for every prefix count
``p`` in 0..``MAX_PREFIX_TOKENS`` (class + distillation + up to 8 register tokens), the grids
``h x w = N - p`` whose shape matches the input with one square patch size ``P`` —
``(H, W) == (h*P, w*P)`` exactly, or up to the floor/ceil that unpadded/padded patch embeddings
produce — are candidates. An exact tiling wins over an approximate one; among equals the smallest
``p`` wins unless two exact tilings remain, which is reported as ambiguous (pass
``num_prefix_tokens``).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Mapping, NamedTuple, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch
import torch.nn.functional as F

__all__ = [
    "MAX_PREFIX_TOKENS",
    "ReshapeTransform",
    "TokenGrid",
    "accepts_input_size",
    "call_reshape_transform",
    "fasterrcnn_reshape_transform",
    "infer_token_grid",
    "make_swin_reshape_transform",
    "make_vit_reshape_transform",
    "swin_reshape_transform",
    "swinT_reshape_transform",
    "vit_reshape_transform",
]

#: class + distillation + up to 8 register tokens
MAX_PREFIX_TOKENS = 10

Size = Tuple[int, int]


@runtime_checkable
class ReshapeTransform(Protocol):
    """A layer-output transform that may use the input's spatial size (H, W)."""

    def __call__(self, tensor: torch.Tensor, *, input_size: Optional[Sequence[int]] = None) -> torch.Tensor: ...


class TokenGrid(NamedTuple):
    """How a (B, N, C) token sequence maps to a patch grid: ``N == prefix + height * width``."""

    prefix: int
    height: int
    width: int


def _tiles(size: int, cells: int) -> Tuple[bool, bool]:
    """(exact, approximate): can ``cells`` patches of one integer size cover ``size`` pixels?"""
    if cells < 1 or cells > size:
        return False, False
    if size % cells == 0:
        return True, True
    lo, hi = size // cells, -(-size // cells)  # candidate patch sizes
    approx = any(p >= 1 and (size // p == cells or -(-size // p) == cells) for p in (lo, hi))
    return False, approx


def _grid_candidates(tokens: int, input_size: Size, prefixes: Sequence[int]) -> list:
    """Every (exact, prefix, h, w) whose grid tiles ``input_size`` with square patches."""
    H, W = input_size
    found = []
    for p in prefixes:
        m = tokens - p
        if m < 1:
            continue
        for h in range(1, math.isqrt(m) + 1):
            if m % h:
                continue
            for hh, ww in {(h, m // h), (m // h, h)}:
                ex_h, ap_h = _tiles(H, hh)
                ex_w, ap_w = _tiles(W, ww)
                if not (ap_h and ap_w):
                    continue
                exact = ex_h and ex_w and H // hh == W // ww
                # approximate tilings must still use one patch size for both axes
                if not exact and abs(H / hh - W / ww) > max(1.0, 0.1 * max(H / hh, W / ww)):
                    continue
                found.append((exact, p, hh, ww))
    return found


def infer_token_grid(
    num_tokens: int,
    input_size: Optional[Sequence[int]] = None,
    num_prefix_tokens: Optional[int] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    max_prefix_tokens: int = MAX_PREFIX_TOKENS,
) -> TokenGrid:
    """Split ``num_tokens`` into prefix tokens and an ``height x width`` patch grid.

    Explicit ``height``/``width``/``num_prefix_tokens`` are honoured and checked; what is missing
    is inferred from ``input_size`` (H, W) — or, without it, a square grid is assumed.

    Raises:
        ValueError: if no grid fits, or two different exact grids do (name the prefix count then).
    """
    if num_tokens < 1:
        raise ValueError(f"cannot form a patch grid from {num_tokens} tokens")
    if height is not None and width is not None:
        p = num_tokens - height * width if num_prefix_tokens is None else num_prefix_tokens
        if p < 0 or p + height * width != num_tokens:
            raise ValueError(
                f"{num_tokens} tokens cannot be {num_prefix_tokens if num_prefix_tokens is not None else 'some'} "
                f"prefix token(s) plus a {height}x{width} grid; check height=, width= and num_prefix_tokens="
            )
        return TokenGrid(p, height, width)
    if num_prefix_tokens is not None:
        prefixes: Sequence[int] = [num_prefix_tokens]
        if num_prefix_tokens < 0 or num_prefix_tokens >= num_tokens:
            raise ValueError(f"num_prefix_tokens={num_prefix_tokens} leaves no patch tokens out of {num_tokens}")
    else:
        prefixes = range(0, min(max_prefix_tokens, num_tokens - 1) + 1)
    if height is not None or width is not None:
        side = height if height is not None else width
        for p in prefixes:
            if (num_tokens - p) % side == 0 and num_tokens - p >= side:
                other = (num_tokens - p) // side
                return TokenGrid(p, side, other) if height is not None else TokenGrid(p, other, side)
        raise ValueError(
            f"{num_tokens} tokens do not form a grid with {'height' if height is not None else 'width'}={side} "
            f"after removing {list(prefixes)} prefix token(s)"
        )
    if input_size is None:
        for p in prefixes:
            side = math.isqrt(num_tokens - p)
            if side * side == num_tokens - p:
                return TokenGrid(p, side, side)
        raise ValueError(
            f"{num_tokens} tokens do not form a square grid after removing {list(prefixes)} prefix token(s) "
            "and the input size is unknown; pass height= and width= (e.g. reshape_transform=functools.partial("
            "vit_reshape_transform, height=14, width=14)) or let CAM pass input_size"
        )
    H, W = (int(s) for s in input_size[-2:])
    found = _grid_candidates(num_tokens, (H, W), prefixes)
    if not found:
        raise ValueError(
            f"cannot infer the patch grid: {num_tokens} tokens minus {min(prefixes)}..{max(prefixes)} prefix "
            f"token(s) never form an h x w grid matching the {H}x{W} input; pass height=, width= and "
            "num_prefix_tokens= explicitly, e.g. reshape_transform=functools.partial("
            "vit_reshape_transform, height=14, width=14, num_prefix_tokens=1)"
        )
    exact = [c for c in found if c[0]]
    pool = exact or found
    best = min(pool, key=lambda c: (c[1], abs(math.log((H / c[2]) / (W / c[3])))))
    rivals = {(c[1], c[2], c[3]) for c in exact if c[1] != best[1]}
    if exact and rivals:
        options = ", ".join(f"{p} prefix + {h}x{w}" for p, h, w in sorted({(best[1], best[2], best[3]), *rivals}))
        raise ValueError(
            f"{num_tokens} tokens on a {H}x{W} input are ambiguous ({options}); pass the number of class/"
            "distillation/register tokens, e.g. reshape_transform=functools.partial("
            "vit_reshape_transform, num_prefix_tokens=1)"
        )
    return TokenGrid(best[1], best[2], best[3])


def _tokens_to_map(tensor: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
    b, n, c = tensor.shape
    patches = tensor[:, grid.prefix :, :]
    return patches.reshape(b, grid.height, grid.width, c).permute(0, 3, 1, 2)


def vit_reshape_transform(
    tensor: torch.Tensor,
    height: Optional[int] = None,
    width: Optional[int] = None,
    *,
    input_size: Optional[Sequence[int]] = None,
    num_prefix_tokens: Optional[int] = None,
) -> torch.Tensor:
    """ViT/DeiT tokens (B, N, C) -> (B, C, height, width), dropping class/distillation/register tokens.

    Called as pytorch-grad-cam's ``vit_reshape_transform(tensor, height, width)``: with ``height``
    and ``width`` given, the first ``N - height * width`` tokens are the prefix. Left out (the
    default), the grid and the prefix count are inferred from N and ``input_size`` (which CAM
    passes), see the module docstring; ``num_prefix_tokens`` settles an ambiguous count.
    """
    if tensor.ndim != 3:
        hint = " A 4-D (B, H, W, C) output is channels-last: use swin_reshape_transform." if tensor.ndim == 4 else ""
        raise ValueError(f"vit_reshape_transform expects tokens of shape (B, N, C), got {tuple(tensor.shape)}.{hint}")
    grid = infer_token_grid(
        tensor.shape[1], input_size, num_prefix_tokens=num_prefix_tokens, height=height, width=width
    )
    return _tokens_to_map(tensor, grid)


def swin_reshape_transform(
    tensor: torch.Tensor,
    height: Optional[int] = None,
    width: Optional[int] = None,
    *,
    input_size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Swin outputs -> (B, C, H, W); also available as pytorch-grad-cam's ``swinT_reshape_transform``.

    Channels-last maps (B, H, W, C) (torchvision, timm >= 0.9) are permuted (``height``/``width``,
    if given, must match them); token sequences (B, H*W, C) (older timm) are laid out on the
    ``height x width`` grid, or, when those are left out, on the grid inferred from
    ``input_size`` (Swin has no prefix tokens).
    """
    if tensor.ndim == 4:
        if (height is not None and tensor.shape[1] != height) or (width is not None and tensor.shape[2] != width):
            raise ValueError(
                f"swin_reshape_transform got a (B, H, W, C) map of shape {tuple(tensor.shape)} but "
                f"height={height}, width={width}; leave height and width out to take the map's own grid"
            )
        return tensor.permute(0, 3, 1, 2)
    if tensor.ndim == 3:
        grid = infer_token_grid(tensor.shape[1], input_size, num_prefix_tokens=0, height=height, width=width)
        return _tokens_to_map(tensor, grid)
    raise ValueError(f"swin_reshape_transform expects (B, H, W, C) or (B, H*W, C), got shape {tuple(tensor.shape)}")


#: pytorch-grad-cam's name for ``swin_reshape_transform``.
swinT_reshape_transform = swin_reshape_transform


def fasterrcnn_reshape_transform(x: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A feature pyramid (torchvision detection backbones' ``OrderedDict`` of (B, C_l, H_l, W_l)
    levels) -> one (B, sum C_l, h, w) map.

    Every level's magnitude ``|x_l|`` is resized bilinearly to the grid of the coarsest level (the
    ``'pool'`` level of torchvision's FPN when present) and the levels are stacked along channels,
    so a CAM weighs the evidence of all scales together. Target the backbone (``model.backbone``)
    of a Faster R-CNN with it.
    """
    if not isinstance(x, Mapping) or not x:
        raise ValueError(
            "fasterrcnn_reshape_transform expects the feature pyramid of a detection backbone, a dict of "
            f"(B, C, H, W) tensors (e.g. target_layers=[model.backbone]), got {type(x).__name__}"
        )
    levels = list(x.values())
    if any(not torch.is_tensor(t) or t.ndim != 4 for t in levels):
        shapes = [tuple(t.shape) if torch.is_tensor(t) else type(t).__name__ for t in levels]
        raise ValueError(f"fasterrcnn_reshape_transform needs (B, C, H, W) tensors at every level, got {shapes}")
    coarsest = x["pool"] if "pool" in x else min(levels, key=lambda t: t.shape[-2] * t.shape[-1])
    size = tuple(coarsest.shape[-2:])
    resized = [
        t.abs() if tuple(t.shape[-2:]) == size else F.interpolate(t.abs(), size, mode="bilinear", align_corners=False)
        for t in levels
    ]
    return torch.cat(resized, dim=1)


def make_vit_reshape_transform(
    height: Optional[int] = None, width: Optional[int] = None, num_prefix_tokens: Optional[int] = None
) -> ReshapeTransform:
    """``vit_reshape_transform`` with some of the grid fixed (e.g. ``num_prefix_tokens=2`` for DeiT)."""
    return functools.partial(vit_reshape_transform, height=height, width=width, num_prefix_tokens=num_prefix_tokens)


def make_swin_reshape_transform(height: Optional[int] = None, width: Optional[int] = None) -> ReshapeTransform:
    """``swin_reshape_transform`` with the grid of token-shaped (older timm) outputs fixed."""
    return functools.partial(swin_reshape_transform, height=height, width=width)


def accepts_input_size(transform: Callable) -> bool:
    """Whether ``transform`` takes an ``input_size`` keyword (or ``**kwargs``)."""
    try:
        params = inspect.signature(transform).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(
        (p.name == "input_size" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) or p.kind == p.VAR_KEYWORD
        for p in params
    )


def call_reshape_transform(
    transform: Callable, tensor: torch.Tensor, input_size: Optional[Sequence[int]]
) -> torch.Tensor:
    """Apply ``transform``, passing ``input_size`` only if it accepts one."""
    if input_size is not None and accepts_input_size(transform):
        return transform(tensor, input_size=tuple(int(s) for s in input_size))
    return transform(tensor)
