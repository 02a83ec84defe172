"""ViT / DeiT / Swin support: token-grid inference, reshape transforms, parity with pytorch-grad-cam."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_cam import AblationCAM, GradCAM, GradCAMPlusPlus, XGradCAM
from pytorch_cam.utils.reshape_transforms import (
    TokenGrid,
    accepts_input_size,
    infer_token_grid,
    make_vit_reshape_transform,
    swin_reshape_transform,
    vit_reshape_transform,
)

timm = pytest.importorskip("timm")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as PgcTarget  # noqa: E402


def assert_correlated(pearson, a: np.ndarray, b: np.ndarray) -> None:
    """Per-image correlation >= 0.99 of two batches of maps, none of them constant."""
    assert a.shape == b.shape
    for x, y in zip(a, b):
        assert x.std() > 0 and y.std() > 0, "degenerate (constant) map: the comparison would be vacuous"
    assert (pearson(a, b) >= 0.99).all(), pearson(a, b)


def token_reference(prefix: int, h: int, w: int):
    """The hand-written transform a pytorch-grad-cam user would write."""

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

    return reshape


def channels_last_reference(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


# ---------------------------------------------------------------- grid inference (closed forms)
@pytest.mark.parametrize(
    "tokens, size, expected",
    [
        (197, (224, 224), (1, 14, 14)),  # ViT-B/16: class token
        (198, (224, 224), (2, 14, 14)),  # DeiT distilled: class + distillation
        (201, (224, 224), (5, 14, 14)),  # class + 4 registers
        (196, (224, 224), (0, 14, 14)),  # no prefix (global-pool ViT, Swin tokens)
        (17, (32, 32), (1, 4, 4)),
        (33, (32, 64), (1, 4, 8)),  # non-square: patch 8
        (33, (64, 32), (1, 8, 4)),
        (197, (230, 225), (1, 14, 14)),  # sizes not divisible by the patch: floor of 230/16
    ],
)
def test_infer_token_grid(tokens, size, expected):
    assert infer_token_grid(tokens, size) == TokenGrid(*expected)


def test_infer_token_grid_explicit_and_square_fallback():
    assert infer_token_grid(50) == TokenGrid(1, 7, 7)  # no input size: square grid
    assert infer_token_grid(198, height=14, width=14) == TokenGrid(2, 14, 14)
    assert infer_token_grid(33, height=4) == TokenGrid(1, 4, 8)
    assert infer_token_grid(17, (48, 48), num_prefix_tokens=8) == TokenGrid(8, 3, 3)


def test_infer_token_grid_errors():
    with pytest.raises(ValueError, match=r"ambiguous \(1 prefix \+ 4x4, 8 prefix \+ 3x3\).*num_prefix_tokens=1"):
        infer_token_grid(17, (48, 48))
    with pytest.raises(ValueError, match="cannot infer the patch grid: 7 tokens"):
        infer_token_grid(7, (64, 64), num_prefix_tokens=0)
    with pytest.raises(ValueError, match="cannot be 1 prefix token"):
        infer_token_grid(197, height=14, width=13, num_prefix_tokens=1)


def test_vit_reshape_transform_layout():
    b, p, h, w, c = 2, 2, 3, 5, 4
    t = torch.randn(b, p + h * w, c)
    out = vit_reshape_transform(t, input_size=(3 * 16, 5 * 16))
    assert out.shape == (b, c, h, w)
    i, j = 2, 3
    assert torch.equal(out[:, :, i, j], t[:, p + i * w + j, :])
    explicit = make_vit_reshape_transform(height=h, width=w, num_prefix_tokens=p)(t)
    assert torch.equal(explicit, out)
    assert torch.equal(functools.partial(vit_reshape_transform, num_prefix_tokens=2)(t, input_size=(48, 80)), out)


def test_swin_reshape_transform_layouts():
    t = torch.randn(2, 4, 6, 8)  # (B, H, W, C)
    assert torch.equal(swin_reshape_transform(t), t.permute(0, 3, 1, 2))
    tokens = t.reshape(2, 24, 8)  # older timm: (B, H*W, C)
    assert torch.equal(swin_reshape_transform(tokens, input_size=(32, 48)), t.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"channels-last: use swin_reshape_transform"):
        vit_reshape_transform(t)


def test_accepts_input_size():
    assert not accepts_input_size(lambda t: t)
    assert accepts_input_size(vit_reshape_transform)
    assert accepts_input_size(functools.partial(vit_reshape_transform, num_prefix_tokens=1))
    assert accepts_input_size(lambda t, **kwargs: t)


# ---------------------------------------------------------------- tiny models, built once
def _tv_vit(image_size: int, patch_size: int) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    m = VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    nn.init.normal_(m.heads.head.weight, std=0.5)  # torchvision zero-inits the head: all gradients would be 0
    return m


def _tv_swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=[4, 4])


def _timm_vit(**kw) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(embed_dim=32, depth=2, num_heads=2, num_classes=10, **kw)


def _timm_deit() -> nn.Module:
    from timm.models.deit import VisionTransformerDistilled

    return VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)


def _timm_swin() -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(
        img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 1), num_classes=10
    )


# name -> (builder, input size (H, W), target layer getter, reference transform, expected INFO text)
CASES = {
    "tv_vit_32_p8": (
        lambda: _tv_vit(32, 8),
        (32, 32),
        lambda m: m.encoder.layers[-1].ln_1,
        token_reference(1, 4, 4),
        "1 prefix token(s) and a 4x4 patch grid",
    ),
    "tv_vit_64_p16": (
        lambda: _tv_vit(64, 16),
        (64, 64),
        lambda m: m.encoder.layers[-1].ln_1,
        token_reference(1, 4, 4),
        "1 prefix token(s) and a 4x4 patch grid",
    ),
    "tv_swin_64x96": (
        _tv_swin,
        (64, 96),
        lambda m: m.features[-1][-1].norm1,
        channels_last_reference,
        "using swin_reshape_transform",
    ),
    "timm_vit_32x64": (
        lambda: _timm_vit(img_size=(32, 64), patch_size=8),
        (32, 64),
        lambda m: m.blocks[-1].norm1,
        token_reference(1, 4, 8),
        "1 prefix token(s) and a 4x8 patch grid",
    ),
    "timm_vit_reg4": (
        lambda: _timm_vit(img_size=32, patch_size=8, reg_tokens=4),
        (32, 32),
        lambda m: m.blocks[-1].norm1,
        token_reference(5, 4, 4),
        "5 prefix token(s) and a 4x4 patch grid",
    ),
    "timm_deit_distilled": (
        _timm_deit,
        (32, 32),
        lambda m: m.blocks[-1].norm1,
        token_reference(2, 4, 4),
        "2 prefix token(s) and a 4x4 patch grid",
    ),
    "timm_swin": (
        _timm_swin,
        (64, 64),
        lambda m: m.layers[-1].blocks[-1].norm1,
        channels_last_reference,
        "using swin_reshape_transform",
    ),
}


@pytest.fixture(scope="module")
def models(seeded_model):
    return {name: seeded_model(case[0]) for name, case in CASES.items()}


TARGETS = [3, 5]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "ours, theirs", [(GradCAM, pgc.GradCAM), (GradCAMPlusPlus, pgc.GradCAMPlusPlus)], ids=["gradcam", "gradcam++"]
)
def test_parity_with_grad_cam_without_reshape_transform(models, make_input, pearson, caplog, name, ours, theirs):
    _, size, get_layer, reference, expected_log = CASES[name]
    model = models[name]
    x = make_input(2, 3, *size, seed=1)
    with caplog.at_level(logging.INFO, logger="pytorch_cam"):
        cam = ours(model, [get_layer(model)])  # no reshape_transform: inferred
        maps = cam(x, targets=TARGETS)
    assert maps.shape == (2, *size)
    assert expected_log in caplog.text
    assert cam.reshape_transform is None  # what the user passed stays as it was
    assert cam.inferred.reshape_transforms[0] is not None  # the inferred transform is kept for later calls
    ref = theirs(model, [get_layer(model)], reshape_transform=reference)(x, targets=[PgcTarget(t) for t in TARGETS])
    assert_correlated(pearson, maps, ref)


@pytest.mark.parametrize("name", ["tv_vit_32_p8", "timm_deit_distilled", "timm_vit_32x64", "tv_swin_64x96"])
def test_target_layers_none_and_explicit_transform_match_reference(models, make_input, pearson, caplog, name):
    _, size, get_layer, reference, _ = CASES[name]
    model = models[name]
    x = make_input(2, 3, *size, seed=2)
    transform = swin_reshape_transform if "swin" in name else vit_reshape_transform
    with caplog.at_level(logging.INFO, logger="pytorch_cam"):
        default = XGradCAM(model, target_layers=None, reshape_transform=transform)
    assert default.target_layers is None and default.inferred.target_layers == [get_layer(model)]
    assert "target_layers=None: using" in caplog.text
    maps = default(x, targets=TARGETS)
    ref = pgc.XGradCAM(model, [get_layer(model)], reshape_transform=reference)(
        x, targets=[PgcTarget(t) for t in TARGETS]
    )
    assert_correlated(pearson, maps, ref)


def test_old_style_one_argument_transform_still_works(models, make_input):
    model = models["timm_deit_distilled"]
    x = make_input(2, 3, 32, 32, seed=3)
    layer = model.blocks[-1].norm1
    calls = []

    def legacy(t):  # pytorch-grad-cam style: tensor only
        calls.append(t.shape)
        return token_reference(2, 4, 4)(t)

    legacy_maps = GradCAM(model, [layer], reshape_transform=legacy)(x, targets=TARGETS)
    auto_maps = GradCAM(model, [layer])(x, targets=TARGETS)
    assert calls, "the user's transform was not called"
    np.testing.assert_allclose(legacy_maps, auto_maps, atol=1e-6)


def test_ablation_cam_uses_the_inferred_transform(models, make_input):
    # AblationCAM ablates the raw layer output along its channel dim; with an inferred transform that
    # is the token layout's last dim, exactly as with an explicit one.
    model = models["timm_vit_reg4"]
    layer = model.blocks[-1].norm1
    x = make_input(1, 3, 32, 32, seed=4)
    auto = AblationCAM(model, [layer], progress=False)(x, targets=[3])
    explicit = AblationCAM(model, [layer], reshape_transform=vit_reshape_transform, progress=False)(x, targets=[3])
    assert auto.std() > 0
    np.testing.assert_allclose(auto, explicit, atol=1e-6)


# ---------------------------------------------------------------- errors
class _TokenToy(nn.Module):
    """Patch-embeds to (B, tokens, 8) and drops some tokens so no grid fits."""

    num_prefix_tokens = 0

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, kernel_size=16, stride=16)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)
        self.keep = keep

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)[:, : self.keep]
        return self.head(self.block(t).mean(dim=1))


def test_uninferable_tokens_raise_naming_the_transform():
    torch.manual_seed(0)
    model = _TokenToy(keep=7).eval()
    cam = GradCAM(model, [model.block])
    with pytest.raises(ValueError, match=r"token-shaped activations \(1, 7, 8\).*cannot infer the patch grid"):
        cam(torch.randn(1, 3, 64, 64), targets=[0])
    # explicit geometry is the way out
    cam = GradCAM(model, [model.block], reshape_transform=make_vit_reshape_transform(height=1, width=7))
    assert cam(torch.randn(1, 3, 64, 64), targets=[0]).shape == (1, 64, 64)


class _ChannelsLastToy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.norm(self.embed(x).permute(0, 2, 3, 1))  # (B, H, W, C)
        return self.head(y.mean(dim=(1, 2)))


def test_channels_last_detection_and_ambiguity():
    torch.manual_seed(0)
    model = _ChannelsLastToy().eval()
    # 64x64 input -> (B, 16, 16, 8): the LayerNorm's width is the last dim only -> channels-last
    cam = GradCAM(model, [model.norm])
    assert cam(torch.randn(1, 3, 64, 64), targets=[1]).shape == (1, 64, 64)
    assert cam.inferred.reshape_transforms[0] is swin_reshape_transform
    # 32x32 input -> (B, 8, 8, 8): cannot tell which dim holds the channels
    with pytest.raises(ValueError, match=r"\(1, 8, 8, 8\), which may be channels-last.*swin_reshape_transform"):
        GradCAM(model, [model.norm])(torch.randn(1, 3, 32, 32), targets=[1])
    maps = GradCAM(model, [model.norm], reshape_transform=swin_reshape_transform)(
        torch.randn(1, 3, 32, 32), targets=[1]
    )
    assert maps.shape == (1, 32, 32)


def test_swin_map_whose_height_equals_channels_is_read_as_channels_last(models, make_input, pearson, caplog):
    # 256x256 on the tiny Swin: the last stage outputs (B, 32, 32, 32); the Swin family settles it.
    model = models["tv_swin_64x96"]
    x = make_input(1, 3, 256, 256, seed=5)
    layer = model.features[-1][-1].norm1
    with caplog.at_level(logging.INFO, logger="pytorch_cam"):
        maps = GradCAM(model, [layer])(x, targets=[3])
    assert "channels-last (B, H, W, C) map (1, 32, 32, 32)" in caplog.text
    ref = pgc.GradCAM(model, [layer], reshape_transform=channels_last_reference)(x, targets=[PgcTarget(3)])
    assert_correlated(pearson, maps, ref)


def test_user_transform_that_returns_tokens_is_named(models, make_input):
    model = models["tv_vit_32_p8"]
    cam = GradCAM(model, [model.encoder.layers[-1].ln_1], reshape_transform=lambda t: t[:, 1:])
    with pytest.raises(ValueError, match=r"token-shaped activations \(1, 16, 32\).*your reshape_transform must return"):
        cam(make_input(1, 3, 32, 32, seed=1), targets=[0])
