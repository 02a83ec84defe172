"""What ``target_layers=None`` and token-layout inference need to know about HuggingFace vision models.

HuggingFace ``transformers`` models name their modules differently from torchvision and timm, so
the generic rules of ``pytorch_cam.utils.find_layers`` either miss them (a dry forward then picks
the patch embedding of a ViT, or a relative-position-bias table of a Swin) or cannot tell how many
class/register tokens precede the patch tokens. The functions here read that from the model's
structure, never from class names, so that related families (DeiT, BEiT, Dinov2 with registers,
CLIP/SigLIP vision towers, ConvNeXt V2, HF ResNet) are covered without a list to maintain:

* the *base model* is ``model.base_model`` (HF's own accessor: ``model.vit`` for
  ``ViTForImageClassification``, the model itself for ``Dinov2Model``), or its ``vision_model``
  (CLIP/SigLIP vision towers);
* its blocks are the first non-empty ``encoder.layer``, ``encoder.layers``, ``encoder.stages``,
  ``layers``, ``layer`` or ``stages`` list (transformers 4.x nests them under ``encoder``, 5.x
  moved some to the base model);
* a transformer block's first norm is its ``layernorm_before`` (ViT, DeiT, BEiT, Swin), ``norm1``
  (Dinov2) or ``layer_norm1`` (CLIP, SigLIP); a Swin stage's blocks are in ``stage.blocks``;
* a stage list without such norms is a CNN (ConvNeXt, ResNet): the last stage is explained.

Prefix tokens are the class token (``embeddings.cls_token`` or CLIP's ``class_embedding``), DeiT's
``distillation_token`` and Dinov2's ``register_tokens``; Swin and SigLIP have none.

This module imports neither ``transformers`` nor the rest of pytorch_cam (it is called from
``find_layers``), and every function returns ``None`` for a model that is not from ``transformers``.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
from torch import nn

__all__ = ["HFLayout", "hf_layout", "hf_num_prefix_tokens", "hf_target_layers", "is_hf_model"]

#: names of a transformer block's first (pre-attention) norm, by family
_FIRST_NORMS = ("layernorm_before", "norm1", "layer_norm1")
#: where a base model keeps its blocks: (owner attribute or "" for the base itself, list attribute)
_BLOCK_LISTS = (
    ("encoder", "layer"),
    ("encoder", "layers"),
    ("encoder", "stages"),
    ("", "layers"),
    ("", "layer"),
    ("", "stages"),
)
#: embedding parameters that each add tokens in front of the patch tokens
_PREFIX_PARAMETERS = ("cls_token", "class_embedding", "distillation_token", "register_tokens")


class HFLayout(NamedTuple):
    """What a HuggingFace vision model's structure says about explaining it."""

    target_layer: nn.Module  # the default target layer
    tokens: bool  # True: the layer outputs tokens (B, prefix + h*w, C); False: a (B, C, H, W) map
    num_prefix_tokens: Optional[int]  # tokens before the patch grid (None for a CNN stage)


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is (a subclass of) a model class defined in ``transformers``."""
    return any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__ if cls is not nn.Module)


def _base_model(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)  # PreTrainedModel: getattr(self, base_model_prefix, self)
    base = base if isinstance(base, nn.Module) else model
    tower = getattr(base, "vision_model", None)  # CLIPVisionModel / SiglipVisionModel wrap their tower
    return tower if isinstance(tower, nn.Module) else base


def _last_item(seq: object) -> Optional[nn.Module]:
    if isinstance(seq, (nn.ModuleList, nn.Sequential)) and len(seq) > 0:
        return seq[-1]
    return None


def _count_tokens(param: object) -> int:
    """Tokens a prefix parameter adds: (1, n, C) or (n, C) -> n, a single (C,) vector -> 1."""
    if not torch.is_tensor(param):
        return 0
    return int(param.shape[-2]) if param.ndim >= 2 else 1


def hf_layout(model: nn.Module) -> Optional[HFLayout]:
    """The default target layer and token layout of a HuggingFace vision model; ``None`` if unknown.

    ``None`` for models not from ``transformers`` and for HF models whose blocks this module does
    not recognise (the generic rules of ``find_layers`` then apply).
    """
    if not is_hf_model(model):
        return None
    base = _base_model(model)
    for owner_name, list_name in _BLOCK_LISTS:
        owner = getattr(base, owner_name, None) if owner_name else base
        last = _last_item(getattr(owner, list_name, None)) if isinstance(owner, nn.Module) else None
        if last is None:
            continue
        swin_stage = _last_item(getattr(last, "blocks", None))
        block = swin_stage if swin_stage is not None else last
        norm = next((getattr(block, n) for n in _FIRST_NORMS if isinstance(getattr(block, n, None), nn.Module)), None)
        if norm is not None:
            if swin_stage is not None:  # Swin: windowed patch tokens only, (B, h*w, C)
                return HFLayout(norm, tokens=True, num_prefix_tokens=0)
            embeddings = getattr(base, "embeddings", None)
            prefix = sum(_count_tokens(getattr(embeddings, n, None)) for n in _PREFIX_PARAMETERS)
            return HFLayout(norm, tokens=True, num_prefix_tokens=prefix)
        if list_name == "stages":  # a CNN's stages (ConvNeXt, ResNet): (B, C, H, W) maps
            return HFLayout(last, tokens=False, num_prefix_tokens=None)
        return None  # blocks of an unknown kind: leave the choice to the generic rules
    return None


def hf_target_layers(model: nn.Module) -> Optional[List[nn.Module]]:
    """The default target layers of a HuggingFace vision model (``None``: not one this module knows).

    The last block's first norm of a ViT/DeiT/BEiT (``layernorm_before``), Dinov2 (``norm1``),
    CLIP/SigLIP vision tower (``layer_norm1``) or Swin (last stage's last block), or the last
    stage of a ConvNeXt / HF ResNet.
    """
    layout = hf_layout(model)
    return None if layout is None else [layout.target_layer]


def hf_num_prefix_tokens(model: nn.Module) -> Optional[int]:
    """Class/distillation/register tokens before the patch tokens of a HuggingFace vision transformer.

    1 for ViT/BEiT/CLIP, 2 for DeiT with its distillation token, 1 + ``num_register_tokens`` for
    Dinov2 with registers, 0 for Swin and SigLIP; ``None`` for a CNN or a model this module does
    not know.
    """
    layout = hf_layout(model)
    return None if layout is None else layout.num_prefix_tokens
