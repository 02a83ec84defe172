"""Models whose output is not a (B, classes) tensor, explained with no wrapper.

* HuggingFace ``transformers`` (built from tiny configs, random weights, offline): ``.logits`` are
  read, ``target_layers=None`` and the token layout come from ``pytorch_cam.utils.hf_models``; a
  backbone with no logits (Dinov2) works with EigenCAM and with a target that reads its output.
* dicts (torchvision segmentation ``{"out", "aux"}``) and tuples (a YOLO-style ``(predictions,
  features)``): the map equals the one of a wrapper that returns the tensor, and where nothing can
  be explained without a target the error says what the output was and what to pass.
* torchvision Faster R-CNN: EigenCAM (first principal component of the merged FPN), Grad-CAM
  (gradients of every FPN level, closed form computed here), Ablation-CAM with
  ``AblationLayerFasterRCNN`` (the peer's maps), and a planted box that matches no detection.
* embeddings: ``SimilarityToConceptTarget`` against an independent autograd computation.

Each map is compared with an independent computation or a wrapper's map, not just checked to exist.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import pytorch_cam
from pytorch_cam import EigenCAM, GradCAM
from pytorch_cam.utils.model_targets import (
    ClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
)
from pytorch_cam.utils.reshape_transforms import fasterrcnn_reshape_transform, make_vit_reshape_transform

CLASS_AGNOSTIC = ["EigenCAM", "KPCA_CAM", "FEM", "RandomCAM", "SobelCAM"]


def numpy_first_component(acts: torch.Tensor) -> torch.Tensor:
    """Per image, the (C, *S) activations projected on their first principal component (numpy SVD),
    the sign chosen so that the largest magnitude is positive. An independent EigenCAM closed form."""
    out = []
    for a in acts.detach().double().numpy():
        flat = a.reshape(a.shape[0], -1).T  # positions x channels
        centred = flat - flat.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        if abs(proj.min()) > abs(proj.max()):
            proj = -proj
        out.append(proj.reshape(a.shape[1:]))
    return torch.from_numpy(np.stack(out)).float()


def assert_valid_maps(maps: np.ndarray, shape: tuple) -> None:
    assert maps.shape == shape and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_allclose(maps.reshape(maps.shape[0], -1).max(axis=1), 1.0, atol=1e-6)  # not constant


# ============================================================================ HuggingFace
try:
    import transformers
except ImportError:  # a test-only dependency: the other sections still run
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="needs HuggingFace transformers")

from pytorch_cam.utils import find_layers  # noqa: E402
from pytorch_cam.utils.hf_models import hf_layout, hf_num_prefix_tokens, hf_target_layers, is_hf_model  # noqa: E402

VIT_LIKE = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


def _seeded(builder):
    torch.manual_seed(0)
    return builder().eval()


def hf_vit():
    return _seeded(
        lambda: transformers.ViTForImageClassification(
            transformers.ViTConfig(**VIT_LIKE, intermediate_size=64, num_labels=5)
        )
    )


def hf_deit():
    return _seeded(
        lambda: transformers.DeiTForImageClassificationWithTeacher(
            transformers.DeiTConfig(**VIT_LIKE, intermediate_size=64, num_labels=5)
        )
    )


def hf_convnext():
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16, 32], depths=[1, 1, 1], num_stages=3, num_labels=5)
    return _seeded(lambda: transformers.ConvNextForImageClassification(config))


def hf_swin():
    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=5
    )
    return _seeded(lambda: transformers.SwinForImageClassification(config))


def hf_dinov2():
    return _seeded(lambda: transformers.Dinov2Model(transformers.Dinov2Config(**VIT_LIKE, intermediate_size=64)))


def hf_dinov2_registers():
    config = transformers.Dinov2WithRegistersConfig(**VIT_LIKE, intermediate_size=64, num_register_tokens=4)
    return _seeded(lambda: transformers.Dinov2WithRegistersModel(config))


def hf_clip():
    return _seeded(
        lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VIT_LIKE, intermediate_size=64))
    )


def hf_siglip():
    return _seeded(
        lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VIT_LIKE, intermediate_size=64))
    )


def hf_resnet():
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
    return _seeded(lambda: transformers.ResNetForImageClassification(config))


def _blocks(base: nn.Module) -> nn.ModuleList:
    """A transformer's block list, wherever this transformers version keeps it."""
    for owner in (getattr(base, "encoder", None), base):
        for name in ("layer", "layers"):
            seq = getattr(owner, name, None) if owner is not None else None
            if isinstance(seq, nn.ModuleList):
                return seq
    raise AssertionError(f"no block list in {type(base).__name__}")


# builder, the expected layer (from the model), whether it outputs tokens, the prefix tokens
HF_CASES = {
    "vit": (hf_vit, lambda m: _blocks(m.vit)[-1].layernorm_before, True, 1),
    "deit": (hf_deit, lambda m: _blocks(m.deit)[-1].layernorm_before, True, 2),  # class + distillation
    "convnext": (hf_convnext, lambda m: m.convnext.encoder.stages[-1], False, None),
    "swin": (hf_swin, lambda m: m.swin.encoder.layers[-1].blocks[-1].layernorm_before, True, 0),
    "dinov2": (hf_dinov2, lambda m: _blocks(m)[-1].norm1, True, 1),
    "dinov2_registers": (hf_dinov2_registers, lambda m: _blocks(m)[-1].norm1, True, 5),  # class + 4 registers
    # transformers 4.x nests the tower in .vision_model, 5.x does not
    "clip": (hf_clip, lambda m: getattr(m, "vision_model", m).encoder.layers[-1].layer_norm1, True, 1),
    "siglip": (hf_siglip, lambda m: getattr(m, "vision_model", m).encoder.layers[-1].layer_norm1, True, 0),
    "resnet": (hf_resnet, lambda m: m.resnet.encoder.stages[-1], False, None),
}


@needs_hf
@pytest.mark.parametrize("name", sorted(HF_CASES))
def test_hf_layout(name):
    build, expected, tokens, prefix = HF_CASES[name]
    model = build()
    assert is_hf_model(model)
    layers = hf_target_layers(model)
    assert layers is not None and len(layers) == 1 and layers[0] is expected(model)
    assert hf_layout(model).tokens is tokens
    assert hf_num_prefix_tokens(model) == prefix


@needs_hf
def test_hf_prefix_tokens_are_those_the_model_produces():
    # Run the models: the first norm's tokens are prefix + the 4x4 patch grid of a 32x32 input.
    for name in ("vit", "deit", "dinov2_registers", "siglip", "swin"):
        build, expected, _, prefix = HF_CASES[name]
        model = build()
        store = {}
        handle = expected(model).register_forward_hook(lambda m, i, o, store=store: store.__setitem__("t", o))
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
        handle.remove()
        # 4x4 patches: 32 / 8 for the ViTs; Swin's last stage after patch 4 and one 2x merge
        assert store["t"].shape[1] == prefix + 16, name


def test_non_hf_models_are_left_to_the_generic_rules(resnet18):
    assert not is_hf_model(resnet18)
    assert hf_layout(resnet18) is None and hf_target_layers(resnet18) is None
    assert hf_num_prefix_tokens(resnet18) is None
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5
    )
    assert hf_target_layers(vit) is None and hf_num_prefix_tokens(vit) is None


@needs_hf
def test_hf_subclass_is_recognised_and_unknown_structures_are_not():
    class MyViT(transformers.ViTForImageClassification):  # a user's subclass, defined outside transformers
        pass

    torch.manual_seed(0)
    model = MyViT(transformers.ViTConfig(**VIT_LIKE, intermediate_size=64, num_labels=5))
    assert hf_target_layers(model) == [_blocks(model.vit)[-1].layernorm_before]

    class Strange(nn.Module):  # an HF-module class whose blocks have none of the known norms
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Conv2d(3, 3, 1)])

    Strange.__module__ = "transformers.models.strange.modeling_strange"
    assert is_hf_model(Strange())
    assert hf_layout(Strange()) is None


@needs_hf
def test_core_consults_hf_models():
    vit, registers = hf_vit(), hf_dinov2_registers()
    assert find_layers.find_transformer_target_layers(vit) == hf_target_layers(vit)
    assert find_layers.known_num_prefix_tokens(registers) == 5


class Logits(nn.Module):
    """The wrapper users write today: the HF model's ``.logits`` as a tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


@needs_hf
@pytest.mark.parametrize("name", ["vit", "convnext", "swin", "deit"])
def test_hf_classifier_with_no_wrapper(make_input, name):
    build, expected, tokens, prefix = HF_CASES[name]
    model = build()
    x = make_input(2, 3, 32, 32, seed=11)
    cam = GradCAM(model, target_layers=None)
    maps = cam(x)
    assert_valid_maps(maps, (2, 32, 32))
    assert cam.layers == [expected(model)]
    # targets=None explained the top class of .logits
    with torch.no_grad():
        top = model(x).logits.argmax(dim=-1).tolist()
    transform = make_vit_reshape_transform(num_prefix_tokens=prefix) if tokens else None
    # The same map from the wrapper, with the layer and layout spelt out: .logits and the layout were understood.
    explicit = GradCAM(Logits(model), [expected(model)], reshape_transform=transform)(
        x, [ClassifierOutputTarget(c) for c in top]
    )
    np.testing.assert_allclose(maps, explicit, atol=1e-6)
    if tokens and prefix > 0:
        # and the layout matters: dropping the last token instead of the class token is another map
        def wrong(t: torch.Tensor) -> torch.Tensor:
            return t[:, :16].reshape(t.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

        other = GradCAM(Logits(model), [expected(model)], reshape_transform=wrong)(
            x, [ClassifierOutputTarget(c) for c in top]
        )
        assert np.abs(other - maps).max() > 0.05


@needs_hf
@pytest.mark.parametrize("name", ["dinov2", "dinov2_registers"])
def test_hf_backbone_eigencam_needs_no_target(make_input, base_pipeline, name):
    build, expected, _, prefix = HF_CASES[name]
    model = build()
    x = make_input(2, 3, 32, 32, seed=12)
    maps = EigenCAM(model, target_layers=None)(x)
    assert_valid_maps(maps, (2, 32, 32))
    store = {}
    handle = expected(model).register_forward_hook(lambda m, i, o: store.__setitem__("t", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    grid = make_vit_reshape_transform(num_prefix_tokens=prefix)(store["t"], input_size=(32, 32))
    np.testing.assert_allclose(maps, base_pipeline(numpy_first_component(grid), (32, 32)), atol=1e-5)


@needs_hf
def test_registers_need_the_model_s_word(make_input):
    # Why hf_num_prefix_tokens exists: on a 16x16 input Dinov2 with 4 registers gives 9 tokens, which
    # are 1 + 4 registers + a 2x2 grid, or 8 + 1x1; the tokens alone cannot tell.
    from pytorch_cam.utils.reshape_transforms import infer_token_grid

    with pytest.raises(ValueError, match="ambiguous"):
        infer_token_grid(9, (16, 16))
    model = hf_dinov2_registers()
    cam = EigenCAM(model, target_layers=None)
    maps = cam(make_input(1, 3, 16, 16, seed=16))
    assert_valid_maps(maps, (1, 16, 16))
    assert cam.activations_and_grads.activations[0].shape[2:] == (2, 2)


@needs_hf
def test_hf_backbone_gradient_methods_say_what_to_pass(make_input):
    model = hf_dinov2()
    with pytest.raises(ValueError) as err:
        GradCAM(model, target_layers=None)(make_input(1, 3, 32, 32, seed=13))
    message = str(err.value)
    # what the output was ...
    assert "BaseModelOutputWithPooling" in message and "'pooler_output': (1, 32)" in message
    # ... and what to pass
    assert "callable(output_of_one_image) -> scalar tensor" in message and "EigenCAM" in message


class Pooled(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).pooler_output


@needs_hf
def test_hf_backbone_similarity_target_reads_the_output(make_input):
    """GradCAM on Dinov2Model with a target reading one image's ``output["pooler_output"]``: no wrapper.

    Equal to the wrapper returning ``.pooler_output`` with the layer and layout spelt out (a
    wrapper hides the HF type, so nothing can be inferred for it).
    """
    model = hf_dinov2()
    x = make_input(2, 3, 32, 32, seed=14)
    with torch.no_grad():
        concepts = model(make_input(2, 3, 32, 32, seed=15)).pooler_output
    seen = []

    def target_for(concept):
        similarity = SimilarityToConceptTarget(concept)

        def target(output):
            seen.append(sorted(output))
            return similarity(output["pooler_output"])

        return target

    maps = GradCAM(model, target_layers=None)(x, [target_for(c) for c in concepts])
    assert_valid_maps(maps, (2, 32, 32))
    assert seen == [["last_hidden_state", "pooler_output"]] * 2  # one image's entries per target
    explicit = GradCAM(
        Pooled(model), [_blocks(model)[-1].norm1], reshape_transform=make_vit_reshape_transform(num_prefix_tokens=1)
    )(x, [SimilarityToConceptTarget(c) for c in concepts])
    np.testing.assert_allclose(maps, explicit, atol=1e-6)


# ============================================================================ dicts: segmentation
@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=True
    ).eval()


class Entry(nn.Module):
    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.key]


def test_segmentation_dict_needs_no_wrapper(segmenter, make_input):
    x = make_input(2, 3, 64, 64, seed=21)
    with torch.no_grad():
        out = segmenter(x)
    assert set(out) == {"out", "aux"}  # two tensors: "out" must be chosen by name
    masks = [(out["out"][i].argmax(0) == 1).float() for i in range(2)]
    targets = [SemanticSegmentationTarget(1, m) for m in masks]
    layer = segmenter.backbone.layer4
    maps = GradCAM(segmenter, [layer])(x, targets)
    assert_valid_maps(maps, (2, 64, 64))
    wrapped = GradCAM(Entry(segmenter, "out"), [layer])(x, targets)
    np.testing.assert_array_equal(maps, wrapped)
    aux = GradCAM(Entry(segmenter, "aux"), [layer])(x, targets)
    assert np.abs(aux - maps).max() > 0.05  # the other head explains something else


def test_segmentation_without_targets(segmenter, make_input):
    x = make_input(1, 3, 64, 64, seed=22)
    with pytest.raises(ValueError) as err:
        GradCAM(segmenter, [segmenter.backbone.layer4])(x)
    message = str(err.value)
    assert "'out': (1, 3, 64, 64)" in message and "SemanticSegmentationTarget(category, mask)" in message
    assert_valid_maps(EigenCAM(segmenter, [segmenter.backbone.layer4])(x), (1, 64, 64))


# ============================================================================ tuples: a YOLO-style detector
class TupleDetector(nn.Module):
    """Backbone (stride 4) + 1x1 head; returns ``(predictions (B, cells, 6), features)`` like YOLOv5 in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(16, 6, 1)

    def forward(self, x: torch.Tensor):
        features = self.backbone(x)
        raw = self.head(features)
        return torch.sigmoid(raw.flatten(2).transpose(1, 2)), features


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return TupleDetector().eval()


@pytest.mark.parametrize("method", CLASS_AGNOSTIC)
def test_tuple_output_class_agnostic_methods_need_no_target(detector, make_input, method):
    x = make_input(2, 3, 32, 32, seed=31)
    maps = getattr(pytorch_cam, method)(detector, [detector.backbone[-1]])(x)
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1


def test_tuple_output_eigencam_is_the_first_component(detector, make_input, base_pipeline):
    x = make_input(2, 3, 32, 32, seed=32)
    maps = EigenCAM(detector, [detector.backbone[-1]])(x)
    with torch.no_grad():
        features = detector(x)[1]
    np.testing.assert_allclose(maps, base_pipeline(numpy_first_component(features), (32, 32)), atol=1e-5)


def test_tuple_output_gradient_method_says_what_to_pass(detector, make_input):
    with pytest.raises(ValueError) as err:
        GradCAM(detector, [detector.backbone[-1]])(make_input(1, 3, 32, 32, seed=33))
    message = str(err.value)
    assert "a tuple of 2 items, the first a tensor of shape (1, 64, 6)" in message
    assert "callable(output_of_one_image) -> scalar tensor" in message and "EigenCAM" in message


def test_tuple_output_with_a_callable_target(detector, make_input):
    x = make_input(2, 3, 32, 32, seed=34)
    shapes = []

    def objectness_of_cell(cell):
        def target(predictions):  # one image's (cells, 6)
            shapes.append(tuple(predictions.shape))
            return predictions[cell, 4]

        return target

    targets = [objectness_of_cell(5), objectness_of_cell(40)]
    maps = GradCAM(detector, [detector.backbone[-1]])(x, targets)
    assert shapes == [(64, 6), (64, 6)]
    assert_valid_maps(maps, (2, 32, 32))
    wrapped = GradCAM(Entry(detector, 0), [detector.backbone[-1]])(x, targets)
    np.testing.assert_array_equal(maps, wrapped)


# ============================================================================ Faster R-CNN
SIZE = 128


def build_fasterrcnn() -> nn.Module:
    """ResNet-50 FPN Faster R-CNN, random weights, 128 px, few proposals; a box head with small weights
    (an untrained head saturates its softmax, whose gradient is then exactly 0)."""
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        min_size=SIZE,
        max_size=SIZE,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=20,
        box_detections_per_img=10,
    )
    for layer in (model.roi_heads.box_predictor.cls_score, model.roi_heads.box_predictor.bbox_pred):
        nn.init.normal_(layer.weight, std=0.01)
        nn.init.zeros_(layer.bias)
    return model.eval()


@pytest.fixture(scope="module")
def fasterrcnn():
    return build_fasterrcnn()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(41))  # [0, 1]: the model normalises


@pytest.fixture(scope="module")
def detections(fasterrcnn, image):
    with torch.no_grad():
        found = fasterrcnn(image)[0]
    assert found["boxes"].shape[0] >= 2 and float(found["scores"][0]) < 0.99  # unsaturated
    return found


def fpn_features(model: nn.Module, x: torch.Tensor, target=None):
    """The backbone's FPN dict for ``x``, and with a target the gradient of its score for every level."""
    store = {}
    handle = model.backbone.register_forward_hook(lambda m, i, o: store.__setitem__("f", o))
    try:
        with torch.set_grad_enabled(target is not None):
            outputs = model(x)
    finally:
        handle.remove()
    features = store["f"]
    if target is None:
        return {k: v.detach() for k, v in features.items()}, None
    grads = torch.autograd.grad(target(outputs[0]), list(features.values()), allow_unused=True)
    grads = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(features.items(), grads)}
    return {k: v.detach() for k, v in features.items()}, grads


def test_fasterrcnn_eigencam_is_the_first_component_of_the_merged_pyramid(fasterrcnn, image, base_pipeline):
    maps = EigenCAM(fasterrcnn, [fasterrcnn.backbone], reshape_transform=fasterrcnn_reshape_transform)(image)
    assert_valid_maps(maps, (1, SIZE, SIZE))
    features, _ = fpn_features(fasterrcnn, image)
    merged = fasterrcnn_reshape_transform(features)
    assert merged.shape[1] == 5 * 256
    np.testing.assert_allclose(maps, base_pipeline(numpy_first_component(merged), (SIZE, SIZE)), atol=1e-5)


def test_fasterrcnn_gradcam_closed_form(fasterrcnn, image, detections, base_pipeline):
    target = FasterRCNNBoxScoreTarget(detections["labels"][:1], detections["boxes"][:1])
    maps = GradCAM(fasterrcnn, [fasterrcnn.backbone], reshape_transform=fasterrcnn_reshape_transform)(image, [target])
    assert_valid_maps(maps, (1, SIZE, SIZE))
    features, grads = fpn_features(fasterrcnn, image, target)
    assert any(float(g.abs().sum()) > 0 for g in grads.values())
    acts, merged_grads = fasterrcnn_reshape_transform(features), fasterrcnn_reshape_transform(grads)
    expected = (merged_grads.mean(dim=(2, 3))[:, :, None, None] * acts).sum(dim=1)
    np.testing.assert_allclose(maps, base_pipeline(expected, (SIZE, SIZE)), atol=1e-5)


def test_fasterrcnn_gradcam_follows_the_planted_box(fasterrcnn, image, detections, caplog):
    cam = GradCAM(fasterrcnn, [fasterrcnn.backbone], reshape_transform=fasterrcnn_reshape_transform)
    boxes, labels = detections["boxes"], detections["labels"]
    first = cam(image, [FasterRCNNBoxScoreTarget(labels[:1], boxes[:1])])
    second = cam(image, [FasterRCNNBoxScoreTarget(labels[1:2], boxes[1:2])])
    assert np.abs(first - second).max() > 0.05  # another box, another map
    # A box that overlaps no detection (IoU <= 0.5) scores 0 whatever the features: an empty map, and a warning.
    from torchvision.ops import box_iou

    planted = torch.tensor([[0.0, 0.0, 6.0, 6.0]])
    assert float(box_iou(planted, boxes).max()) < 0.5
    with caplog.at_level(logging.WARNING, logger="pytorch_cam"):
        empty = cam(image, [FasterRCNNBoxScoreTarget(labels[:1], planted)])
    assert empty.max() == 0.0
    assert "all-zero map" in caplog.text


def test_fasterrcnn_needs_a_target_or_a_class_agnostic_method(fasterrcnn, image):
    with pytest.raises(ValueError) as err:
        GradCAM(fasterrcnn, [fasterrcnn.backbone], reshape_transform=fasterrcnn_reshape_transform)(image)
    message = str(err.value)
    assert "a list of 1 items, the first dict{'boxes'" in message
    assert "FasterRCNNBoxScoreTarget(labels, boxes)" in message
    with pytest.raises(ValueError, match="fasterrcnn_reshape_transform"):
        EigenCAM(fasterrcnn, [fasterrcnn.backbone])(image)  # the FPN dict needs merging


def test_fasterrcnn_ablationcam_matches_the_peer(fasterrcnn, image, detections):
    peer = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.ablation_layer import AblationLayerFasterRCNN as PeerLayer
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget as PeerTarget

    from pytorch_cam.ablation_layer import AblationLayerFasterRCNN

    ratio = 0.004  # 2 * int(1280 * ratio) = 10 channels: 10 forward passes for each library
    labels, boxes = detections["labels"][:2], detections["boxes"][:2]
    ours = pytorch_cam.AblationCAM(
        fasterrcnn,
        [fasterrcnn.backbone],
        reshape_transform=fasterrcnn_reshape_transform,
        ablation_layer=AblationLayerFasterRCNN(),
        ratio_channels_to_ablate=ratio,
        progress=False,
    )(image, [FasterRCNNBoxScoreTarget(labels, boxes)])
    assert_valid_maps(ours, (1, SIZE, SIZE))
    peer_model = build_fasterrcnn()  # the peer swaps the backbone out during its call: a model of its own
    theirs = peer.AblationCAM(
        peer_model,
        [peer_model.backbone],
        reshape_transform=fasterrcnn_reshape_transform,  # ours for both: the ablation is what is compared
        ablation_layer=PeerLayer(),
        ratio_channels_to_ablate=ratio,
    )(image, [PeerTarget(labels, boxes)])
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_fasterrcnn_ablationcam_default_says_what_to_pass(fasterrcnn, image, detections):
    # Exact zeroing needs one tensor to zero a channel of; a dict of FPN levels gets a ValueError naming the fix.
    target = FasterRCNNBoxScoreTarget(detections["labels"][:1], detections["boxes"][:1])
    cam = pytorch_cam.AblationCAM(
        fasterrcnn,
        [fasterrcnn.backbone],
        reshape_transform=fasterrcnn_reshape_transform,
        ratio_channels_to_ablate=0.004,
        progress=False,
    )
    try:
        maps = cam(image, [target])
    except ValueError as err:
        assert "AblationLayerFasterRCNN" in str(err)
    else:
        assert_valid_maps(maps, (1, SIZE, SIZE))


# ============================================================================ embeddings
@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    return model.eval()


def test_similarity_to_concept_closed_form(embedder, make_input, base_pipeline):
    x = make_input(2, 3, 64, 64, seed=51)
    with torch.no_grad():
        concepts = embedder(make_input(2, 3, 64, 64, seed=52))
    layer = embedder.layer4[-1]
    maps = GradCAM(embedder, [layer])(x, [SimilarityToConceptTarget(c) for c in concepts])
    assert_valid_maps(maps, (2, 64, 64))
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    embeddings = embedder(x)
    handle.remove()
    score = nn.functional.cosine_similarity(embeddings, concepts, dim=1).sum()
    (grads,) = torch.autograd.grad(score, store["a"])
    expected = (grads.mean(dim=(2, 3))[:, :, None, None] * store["a"].detach()).sum(dim=1)
    np.testing.assert_allclose(maps, base_pipeline(expected, (64, 64)), atol=1e-5)
