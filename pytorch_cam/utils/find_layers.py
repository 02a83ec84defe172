"""Finding target layers: by type, by predicate, and a sensible default for a model.

``find_default_target_layers(model, input_tensor)`` is what ``target_layers=None`` uses:

* known transformer families — torchvision ``VisionTransformer`` and ``SwinTransformer``, timm
  ``VisionTransformer`` (ViT, DeiT, distilled DeiT, register tokens), timm ``SwinTransformer`` and
  other timm models whose ``blocks[-1]`` has a ``norm1`` — get the last block's first norm
  (``ln_1`` / ``norm1``), the layer the pytorch-grad-cam tutorials use;
* any other model gets one dry forward pass with hooks on every submodule. The chosen layer is the
  last module, in call order, whose output is still a spatial map (4-D or 5-D with more than one
  position) and is followed by a module whose output is not (global pooling, flatten, the head).
  Adaptive pooling modules themselves are skipped (VGG's 7x7 ``avgpool`` is a resampling, not a
  feature). When several modules return that same tensor (``layer4``, ``layer4[-1]``, its final
  ReLU), the outermost block that is not a plain ``nn.Sequential``/``ModuleList`` is picked
  (``layer4[-1]``); without one, the innermost module (VGG: ``features[-1]``).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from pytorch_cam.utils.hf_models import hf_layout, hf_num_prefix_tokens, hf_target_layers
from pytorch_cam.utils.model_state import eval_mode

logger = logging.getLogger("pytorch_cam")

__all__ = [
    "find_default_target_layers",
    "find_layer_predicate_recursive",
    "find_layer_types_recursive",
    "find_spatial_target_layer",
    "find_transformer_target_layers",
    "guess_channels_last",
    "known_num_prefix_tokens",
    "is_swin_model",
    "module_name",
    "replace_all_layer_type_recursive",
    "replace_layer_recursive",
]

_ADAPTIVE_POOLS = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def find_layer_types_recursive(
    model: nn.Module, layer_types: Union[Type[nn.Module], Sequence[Type[nn.Module]]]
) -> List[nn.Module]:
    """Every submodule of ``model`` that is an instance of one of ``layer_types``, in definition order.

    Subclasses count (timm's ``Conv2dSame`` is an ``nn.Conv2d``); ``model`` itself is not a
    candidate, and a module registered in two places is listed once.
    """
    types = tuple(layer_types) if isinstance(layer_types, (list, tuple, set, frozenset)) else (layer_types,)
    if not types or not all(isinstance(t, type) for t in types):
        raise TypeError(
            f"layer_types must be a module class or a sequence of them, e.g. [nn.Conv2d], got {layer_types!r}"
        )
    return find_layer_predicate_recursive(model, lambda m: isinstance(m, types))


def find_layer_predicate_recursive(model: nn.Module, predicate: Callable[[nn.Module], bool]) -> List[nn.Module]:
    """Every submodule of ``model`` (not ``model`` itself) for which ``predicate(module)`` is true,
    in definition order (depth first); a module registered in two places is listed once."""
    return [m for m in model.modules() if m is not model and predicate(m)]


def _children_slots(module: nn.Module) -> Iterator[Tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, child) for every registered child, depth first in definition order.

    A parent's direct children come before the children of its first child is entered (pre-order
    per child): the order in which a recursive search finds them.
    """
    stack = [(module, iter(list(module._modules.items())))]
    while stack:
        parent, children = stack[-1]
        for name, child in children:
            if child is not None:
                yield parent, name, child
                stack.append((child, iter(list(child._modules.items()))))
                break
        else:
            stack.pop()


def replace_layer_recursive(model: nn.Module, old_layer: nn.Module, new_layer: nn.Module) -> bool:
    """Put ``new_layer`` in the place of ``old_layer`` inside ``model``; whether it was found.

    Only the first place ``old_layer`` is registered (depth first, in definition order) is
    replaced. This changes ``model``: it is meant for building modified models, not for explaining
    one (the CAM methods never call it on the user's model).
    """
    for parent, name, child in _children_slots(model):
        if child is old_layer:
            parent._modules[name] = new_layer
            return True
    return False


def replace_all_layer_type_recursive(
    model: nn.Module, old_layer_type: Union[Type[nn.Module], Tuple[Type[nn.Module], ...]], new_layer: nn.Module
) -> None:
    """Put ``new_layer`` (one shared instance) in the place of every submodule of ``model`` that
    is an instance of ``old_layer_type``, e.g. ``(model, nn.ReLU, GuidedReLU())``.

    The matches are all found in the tree as it was before any replacement (inside a replaced
    module too), and ``new_layer`` itself is never searched, so replacing a type with an instance
    of a subclass cannot loop. Changes ``model``.
    """
    slots = [(parent, name) for parent, name, child in _children_slots(model) if isinstance(child, old_layer_type)]
    for parent, name in slots:
        parent._modules[name] = new_layer


def module_name(model: nn.Module, layer: nn.Module) -> str:
    """The qualified name of ``layer`` inside ``model`` ('' for the model itself)."""
    for name, m in model.named_modules():
        if m is layer:
            return name
    raise ValueError(f"{type(layer).__name__} is not a submodule of the model")


def _last(seq: Iterable) -> Optional[nn.Module]:
    items = list(seq) if isinstance(seq, (nn.Sequential, nn.ModuleList)) else None
    return items[-1] if items else None


def _from_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def is_swin_model(model: nn.Module) -> bool:
    """torchvision or timm Swin Transformer (whose blocks output channels-last (B, H, W, C) maps)."""
    name = type(model).__name__
    module = type(model).__module__
    return name.startswith("SwinTransformer") and (module.startswith("torchvision.") or module.startswith("timm."))


def known_num_prefix_tokens(model: nn.Module) -> Optional[int]:
    """Class/distillation/register tokens in front of the patch tokens, when the model says so."""
    hf = hf_num_prefix_tokens(model)  # HuggingFace models (CLS, distillation and register tokens)
    if hf is not None:
        return hf
    n = getattr(model, "num_prefix_tokens", None)  # timm ViT family
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    mod = type(model).__module__
    if type(model).__name__ == "VisionTransformer" and mod.startswith("torchvision."):
        return 1
    if is_swin_model(model):
        return 0
    return None


def find_transformer_target_layers(model: nn.Module) -> Optional[List[nn.Module]]:
    """The last block's first norm for known transformer families, else ``None``."""
    hf = hf_target_layers(model)  # HuggingFace ViT/DeiT/Swin/DINOv2/... (and the last stage of its CNNs)
    if hf is not None:
        return hf
    name = type(model).__name__
    tv = type(model).__module__.startswith("torchvision.")
    if tv and name == "VisionTransformer":
        return [model.encoder.layers[-1].ln_1]
    if tv and name == "SwinTransformer":
        return [model.features[-1][-1].norm1]
    if _from_timm(model):
        layers = getattr(model, "layers", None)
        blocks = getattr(_last(layers), "blocks", None) if layers is not None else None
        if is_swin_model(model) and hasattr(_last(blocks), "norm1"):
            return [_last(blocks).norm1]
        last = _last(getattr(model, "blocks", None))
        if last is not None and isinstance(getattr(last, "norm1", None), nn.Module):
            return [last.norm1]
    return None


def _is_spatial(t: torch.Tensor) -> bool:
    return t.ndim in (4, 5) and int(torch.Size(t.shape[2:]).numel()) > 1


def find_spatial_target_layer(model: nn.Module, input_tensor: torch.Tensor) -> nn.Module:
    """The last spatial module before global pooling, found with one no-grad forward of ``input_tensor``.

    The caller is responsible for eval mode; the model's hooks are removed afterwards.
    """
    records: List[Tuple[str, nn.Module, torch.Tensor]] = []
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            t = output[0] if isinstance(output, (tuple, list)) and output else output
            # Only per-image outputs: a parameter or a position table (batch dim 1 for a larger batch) is no map.
            if torch.is_tensor(t) and t.ndim > 0 and t.shape[0] == 2:
                records.append((name, module, t))

        return hook

    try:
        for name, m in model.named_modules():
            if name:  # not the root: its output is the prediction
                handles.append(m.register_forward_hook(make_hook(name)))
        # Two images, so that an output that is not per image (batch dim 1) tells itself apart.
        probe = input_tensor[:1].repeat(2, *([1] * (input_tensor.ndim - 1)))
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()

    last = None
    for i, (_, m, t) in enumerate(records):
        if _is_spatial(t) and not isinstance(m, _ADAPTIVE_POOLS):
            last = i
    head = last is not None and any(not _is_spatial(t) for _, _, t in records[last + 1 :])
    if last is None or not head:
        shapes = sorted({tuple(t.shape) for _, _, t in records[-5:]})
        what = (
            "no module produces a (B, C, H, W) map"
            if last is None
            else f"the last spatial output ('{records[last][0]}') is not followed by global pooling"
        )
        raise ValueError(
            f"cannot choose a default target layer for {type(model).__name__}: {what} (last outputs: {shapes}); "
            "pass target_layers explicitly, e.g. target_layers=[model.layer4[-1]] for a ResNet or "
            "[model.backbone.layer4] for a segmentation model"
        )
    tensor = records[last][2]
    same = [(name, m) for name, m, t in records if t is tensor]  # in call order
    # Prefer a block (a module with children that is not a plain container), the outermost one:
    # layer4[-1] rather than its final ReLU or the Sequential layer4. Else the innermost module:
    # VGG's features[-1] rather than features.
    blocks = [(n, m) for n, m in same if any(True for _ in m.children()) and type(m) not in _CONTAINERS]
    if blocks:
        return min(blocks, key=lambda nm: nm[0].count("."))[1]
    depth = max(n.count(".") for n, _ in same)
    return [m for n, m in same if n.count(".") == depth][-1]  # in-place ops: the last one applied


def find_default_target_layers(model: nn.Module, input_tensor: Optional[torch.Tensor] = None) -> List[nn.Module]:
    """A sensible default target layer for ``model`` (see the module docstring); logs its name at INFO.

    ``input_tensor`` (one image is enough) is needed for models that are not a known transformer
    family; the model is run once under ``torch.no_grad()`` in eval mode, then its flags restored.
    """
    layers = find_transformer_target_layers(model)
    how = "the last transformer block's first norm"
    layout = hf_layout(model)
    if layers is not None and layout is not None and not layout.tokens:
        how = "the last stage of the HuggingFace CNN"
    if layers is None:
        if input_tensor is None:
            raise ValueError(
                f"{type(model).__name__} is not a known transformer family, so finding its default target "
                "layer needs a forward pass: pass input_tensor (one image is enough), or target_layers explicitly"
            )
        with eval_mode(model):
            layers = [find_spatial_target_layer(model, input_tensor)]
        how = "the last spatial layer before global pooling"
    logger.info(
        "target_layers=None: using %s for %s: %s",
        ", ".join(f"'{module_name(model, m)}' ({type(m).__name__})" for m in layers),
        type(model).__name__,
        how,
    )
    return layers


def _channel_widths(layer: nn.Module) -> Tuple[set, set]:
    """Channel counts the layer's modules work on: (channels-last ops, channels-first ops)."""
    last: set = set()
    first: set = set()
    for m in layer.modules():
        if isinstance(m, nn.LayerNorm) and "2d" not in type(m).__name__.lower():
            last.add(int(m.normalized_shape[-1]))
        elif isinstance(m, nn.LayerNorm):  # LayerNorm2d variants normalise dim 1 of (B, C, H, W)
            first.add(int(m.normalized_shape[-1]))
        elif isinstance(m, nn.Linear):
            last.add(m.out_features)
        elif isinstance(m, nn.modules.conv._ConvNd):
            first.add(m.out_channels)
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
            first.add(getattr(m, "num_features", getattr(m, "num_channels", None)))
    return last, first


def guess_channels_last(model: nn.Module, layer: nn.Module, shape: Sequence[int]) -> Optional[bool]:
    """Whether a 4-D output of ``layer`` is channels-last (B, H, W, C); ``None`` when it cannot tell.

    Evidence comes from the layer's own modules: a LayerNorm or Linear whose width equals the last
    dimension, and no module (conv, batch/group norm, LayerNorm, Linear) whose width equals dim 1,
    means channels-last (torchvision/timm Swin blocks). No LayerNorm/Linear of that width means
    channels-first, as CNNs are. If both dims match a width, a Swin model is taken as channels-last
    and anything else is undecided.
    """
    if len(shape) != 4:
        return False
    last, first = _channel_widths(layer)
    d1, dl = int(shape[1]), int(shape[-1])
    if dl not in last:
        return False
    if d1 not in last and d1 not in first:
        return True
    if d1 != dl and d1 in first:
        return False
    return True if is_swin_model(model) else None
