"""Default target layers (target_layers=None) and the find_layers helpers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pytorch_cam import GradCAM
from pytorch_cam.utils.find_layers import (
    find_default_target_layers,
    find_layer_predicate_recursive,
    find_layer_types_recursive,
    find_transformer_target_layers,
    module_name,
)

X64 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


# name -> the layer pytorch-grad-cam's README recommends (or the module returning the same tensor)
CNN_DEFAULTS = {
    "resnet18": "layer4.1",
    "vgg11": "features.20",
    "densenet121": "features.norm5",
    "mobilenet_v3_small": "features.12",
    "efficientnet_b0": "features.8",
    "convnext_tiny": "features.7.2",
}


@pytest.mark.parametrize("name", list(CNN_DEFAULTS))
def test_cnn_default_is_last_spatial_layer_before_pooling(name):
    # The search only uses output shapes and tensor identity, which the meta device reproduces
    # without allocating or initialising weights (densenet/convnext would take seconds on CPU).
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None)
        x = torch.empty(1, 3, 64, 64)
    model.train()  # flags must come back as they were
    (layer,) = find_default_target_layers(model, x)
    assert module_name(model, layer) == CNN_DEFAULTS[name]
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


def test_transformer_families_need_no_forward(resnet18):
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    timm = pytest.importorskip("timm")
    tv_vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    tv_swin = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=[4, 4])
    tiny = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    t_vit = timm.models.vision_transformer.VisionTransformer(**tiny)
    t_deit = timm.models.deit.VisionTransformerDistilled(**tiny)
    t_swin = timm.models.swin_transformer.SwinTransformer(
        img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 1)
    )
    assert find_default_target_layers(tv_vit) == [tv_vit.encoder.layers[-1].ln_1]
    assert find_default_target_layers(tv_swin) == [tv_swin.features[-1][-1].norm1]
    assert find_default_target_layers(t_vit) == [t_vit.blocks[-1].norm1]
    assert find_default_target_layers(t_deit) == [t_deit.blocks[-1].norm1]
    assert find_default_target_layers(t_swin) == [t_swin.layers[-1].blocks[-1].norm1]
    assert find_transformer_target_layers(resnet18) is None


def test_cam_with_target_layers_none_matches_explicit_and_caches(resnet18, caplog):
    calls = []
    handle = resnet18.register_forward_pre_hook(lambda m, i: calls.append(1))
    try:
        with caplog.at_level(logging.INFO, logger="pytorch_cam"):
            cam = GradCAM(resnet18, target_layers=None)
            assert cam.target_layers is None  # a CNN's default needs the first call's input
            maps = cam(X64, targets=[1])
        assert "target_layers=None: using 'layer4.1' (BasicBlock) for ResNet" in caplog.text
        assert len(calls) == 2  # one dry forward, one real
        assert cam.inferred.target_layers == [resnet18.layer4[-1]]  # kept apart from what the user passed
        assert cam.target_layers is None and cam.layers == [resnet18.layer4[-1]]
        cam(X64, targets=[1])
        assert len(calls) == 3  # cached: no second dry forward
    finally:
        handle.remove()
    explicit = GradCAM(resnet18, [resnet18.layer4[-1]])(X64, targets=[1])
    np.testing.assert_allclose(maps, explicit, atol=1e-6)


def test_find_layer_helpers(resnet18):
    convs = find_layer_types_recursive(resnet18, nn.Conv2d)
    assert len(convs) == 20 and convs[0] is resnet18.conv1
    norms_and_convs = find_layer_types_recursive(resnet18, [nn.BatchNorm2d, nn.Conv2d])
    assert len(norms_and_convs) == 40
    blocks = find_layer_predicate_recursive(resnet18, lambda m: type(m).__name__ == "BasicBlock")
    assert blocks[-1] is resnet18.layer4[-1] and len(blocks) == 8


def test_default_layer_errors():
    fully_conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match=r"not followed by global pooling.*pass target_layers explicitly"):
        find_default_target_layers(fully_conv, X64)
    with pytest.raises(ValueError, match="needs a forward pass: pass input_tensor"):
        find_default_target_layers(fully_conv)
    with pytest.raises(ValueError, match="target_layers is empty"):
        GradCAM(fully_conv, target_layers=[])
