"""Model targets (pytorch_cam.utils.model_targets): closed forms, parity with pytorch-grad-cam,
errors, and targets inside a CAM (a detector's box score, a concept embedding)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import pytorch_cam as pc
from pytorch_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
)


# ------------------------------------------------------------------ classifier and segmentation targets
def test_classifier_output_target():
    out = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    assert ClassifierOutputTarget(2)(out[0]).item() == 3.0
    assert ClassifierOutputTarget(-1)(out[1]).item() == 8.0
    np.testing.assert_array_equal(ClassifierOutputTarget(1)(out).numpy(), [2.0, 6.0])
    with pytest.raises(IndexError, match=r"class 4 is outside the model output, which has 4 classes \(valid: 0..3\)"):
        ClassifierOutputTarget(4)(out[0])
    with pytest.raises(TypeError, match="category must be an int class index"):
        ClassifierOutputTarget(1.0)


def test_classifier_output_softmax_target():
    out = torch.tensor([1.0, 2.0, 0.5])
    expected = math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(0.5))
    assert ClassifierOutputSoftmaxTarget(1)(out).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(IndexError, match="outside the model output"):
        ClassifierOutputSoftmaxTarget(3)(out)


def test_binary_classifier_output_target():
    out = torch.tensor([0.7])
    assert BinaryClassifierOutputTarget(1)(out).item() == pytest.approx(0.7)
    assert BinaryClassifierOutputTarget(0)(out).item() == pytest.approx(-0.7)
    with pytest.raises(ValueError, match="takes category 0 or 1, got 2"):
        BinaryClassifierOutputTarget(2)


def test_semantic_segmentation_target():
    out = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    mask = np.zeros((3, 4), np.float32)
    mask[1, 2] = mask[2, 3] = 1
    assert SemanticSegmentationTarget(1, mask)(out).item() == out[1, 1, 2].item() + out[1, 2, 3].item()
    as_tensor = SemanticSegmentationTarget(0, torch.from_numpy(mask))
    assert as_tensor(out).item() == out[0, 1, 2].item() + out[0, 2, 3].item()
    with pytest.raises(ValueError, match=r"expects a per-image output of shape \(classes, H, W\)"):
        SemanticSegmentationTarget(0, mask)(out[0])
    with pytest.raises(IndexError, match="target class 2 is outside the segmentation output's 2 classes"):
        SemanticSegmentationTarget(2, mask)(out)
    with pytest.raises(ValueError, match=r"mask shape \(4, 3\) differs from the output's spatial shape \(3, 4\)"):
        SemanticSegmentationTarget(0, mask.T)(out)


# ------------------------------------------------------------------ ReST, detection and concept targets
def test_rest_closed_form_and_grad_cam_parity():
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST as GradCamReST

    torch.manual_seed(0)
    logits = torch.randn(10)
    ours = ClassifierOutputReST(4)(logits)
    expected = logits[4] - torch.nn.functional.cross_entropy(logits[None], torch.tensor([4]))
    assert torch.allclose(ours, expected, atol=1e-6)
    assert torch.allclose(ours, GradCamReST(4)(logits), atol=1e-6)
    with pytest.raises(IndexError, match="target class 12 is outside the model output, which has 10 classes"):
        ClassifierOutputReST(12)(logits)


def test_rest_target_in_a_cam():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    maps = pc.GradCAM(model, [model[0]])(torch.randn(2, 3, 16, 16), [ClassifierOutputReST(1), ClassifierOutputReST(3)])
    assert maps.shape == (2, 16, 16) and np.isfinite(maps).all()


def _detections(boxes, labels, scores):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


@pytest.mark.parametrize(
    "pred",
    [
        _detections([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10]], [1, 2, 1], [0.9, 0.8, 0.7]),  # both match
        _detections([[0, 0, 10, 10], [20, 20, 30, 30]], [3, 2], [0.9, 0.8]),  # first: label differs
        _detections([[0, 0, 10, 10], [24, 24, 34, 34]], [1, 2], [0.9, 0.8]),  # second: IoU too low
        _detections([], [], []),  # nothing detected
    ],
)
def test_box_score_matches_grad_cam(pred):
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget as GradCamBox

    ref_boxes, ref_labels = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float32), [1, 2]
    ours = FasterRCNNBoxScoreTarget(ref_labels, ref_boxes)(pred)
    theirs = GradCamBox(ref_labels, ref_boxes)(pred)
    assert torch.allclose(ours.reshape(()), theirs.reshape(()), atol=1e-6)


def test_box_score_closed_form_and_errors():
    pred = _detections([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], [0.9, 0.8])
    score = FasterRCNNBoxScoreTarget([1, 2], [[0, 0, 10, 10], [20, 20, 30, 30]])(pred)
    assert score.item() == pytest.approx((1 + 0.9) + (1 + 0.8))
    with pytest.raises(ValueError, match="got 1 labels for 2 bounding boxes"):
        FasterRCNNBoxScoreTarget([1], [[0, 0, 10, 10], [20, 20, 30, 30]])
    with pytest.raises(TypeError, match="expects one image's detection dict"):
        FasterRCNNBoxScoreTarget([1], [[0, 0, 10, 10]])(torch.zeros(5))


class FakeDetector(nn.Module):
    """Returns torchvision's detection structure; box scores depend on the conv features."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        feats = self.backbone(x)
        out = []
        for f in feats:
            left, right = f[:, :, :8].mean(dim=(1, 2)), f[:, :, 8:].mean(dim=(1, 2))
            scores = torch.sigmoid(self.head(torch.stack([left, right])).sum(1))
            boxes = torch.tensor([[0.0, 0.0, 8.0, 16.0], [8.0, 0.0, 16.0, 16.0]])
            out.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": scores})
        return out


def test_box_score_target_explains_a_detector():
    torch.manual_seed(0)
    model = FakeDetector().eval()
    x = torch.randn(1, 3, 16, 16)
    target = FasterRCNNBoxScoreTarget([1], [[0.0, 0.0, 8.0, 16.0]])  # only the left box
    maps = pc.HiResCAM(model, [model.backbone[2]])(x, [target])
    assert maps.shape == (1, 16, 16) and np.isfinite(maps).all()
    # The score only depends on the left half's features, so the right half gets no attribution.
    assert maps[0, :, 10:].max() == 0 and maps[0, :, :8].max() > 0


def test_similarity_to_concept():
    torch.manual_seed(0)
    emb, concept = torch.randn(16), torch.randn(16)
    value = SimilarityToConceptTarget(concept)(emb)
    assert torch.allclose(value, emb @ concept / (emb.norm() * concept.norm()), atol=1e-6)
    assert SimilarityToConceptTarget(emb.numpy())(emb).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="the embedding has 16 values but the concept vector has 3"):
        SimilarityToConceptTarget(torch.ones(3))(emb)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        concepts = model(x)
    maps = pc.GradCAM(model, [model[0]])(x, [SimilarityToConceptTarget(c) for c in concepts])
    assert maps.shape == (2, 16, 16) and np.isfinite(maps).all()


def test_batched_class_scores_equal_per_image_scores_and_gradients():
    """The gather fast path for ClassifierOutputTarget: same values and gradients as scoring each row."""
    from pytorch_cam.base_cam import target_score, target_scores
    from pytorch_cam.utils.model_targets import ClassifierOutputTarget as COT

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, generator=g, requires_grad=True)
    targets = [COT(3), COT(-1), COT(0), COT(3)]
    fast = target_scores(targets, logits)
    (g_fast,) = torch.autograd.grad((fast * torch.arange(1.0, 5.0)).sum(), logits)
    slow = torch.stack([target_score(t, logits[i]) for i, t in enumerate(targets)])
    (g_slow,) = torch.autograd.grad((slow * torch.arange(1.0, 5.0)).sum(), logits)
    assert torch.equal(fast, slow) and torch.equal(g_fast, g_slow)
    with pytest.raises(IndexError, match="outside the model output"):
        target_scores([COT(1), COT(10)], logits)


def test_similarity_target_given_a_dict_names_the_problem():
    """Regression: a dict-valued model output was a raw AttributeError ('dict' has no 'reshape')."""
    from pytorch_cam.utils.model_targets import SimilarityToConceptTarget

    target = SimilarityToConceptTarget(torch.ones(4))
    with pytest.raises(TypeError, match="embedding tensor.*dict with keys \\['embedding'\\]"):
        target({"embedding": torch.ones(4)})
    assert float(target(torch.ones(4))) == pytest.approx(1.0)
