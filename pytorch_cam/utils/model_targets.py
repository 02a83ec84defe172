"""Targets: callables that turn one image's model output into the scalar a CAM explains.

A target receives the output row of a single image (``model_output[i]``) and returns a scalar
tensor. Anything with that signature works, so custom scores need no subclassing.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

__all__ = [
    "ClassifierOutputTarget",
    "ClassifierOutputSoftmaxTarget",
    "BinaryClassifierOutputTarget",
    "SemanticSegmentationTarget",
    "ClassifierOutputReST",
    "FasterRCNNBoxScoreTarget",
    "SimilarityToConceptTarget",
    "FinerWeightedTarget",
    "SoftmaxOutputTarget",
    "RawScoresOutputTarget",
]


def _check_class(category: int, n: int) -> None:
    if not -n <= category < n:
        raise IndexError(
            f"target class {category} is outside the model output, which has {n} classes "
            f"(valid: 0..{n - 1}); pass a class index the model actually predicts"
        )


def _check_category(category: int, model_output: torch.Tensor) -> None:
    _check_class(category, model_output.shape[-1])


def class_indices(targets: Sequence[ClassifierOutputTarget], n: int, device: torch.device) -> torch.Tensor:
    """(len(targets),) long: each class-index target's class as an index into ``n`` classes (negative
    classes count from the end, as the targets themselves index), for scoring many rows in one gather.
    A class outside the ``n`` raises the targets' own IndexError."""
    for t in targets:
        _check_class(t.category, n)
    return torch.tensor([t.category % n for t in targets], device=device)


class ClassifierOutputTarget:
    """The raw score (logit) of ``category``."""

    def __init__(self, category: int) -> None:
        if isinstance(category, bool) or not isinstance(category, (int, np.integer)):
            raise TypeError(f"category must be an int class index, got {category!r}")
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_category(self.category, model_output)
        return model_output[..., self.category]

    def __repr__(self) -> str:
        return f"ClassifierOutputTarget({self.category})"


class ClassifierOutputSoftmaxTarget(ClassifierOutputTarget):
    """The softmax probability of ``category`` (scores compete with the other classes)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_category(self.category, model_output)
        return torch.softmax(model_output, dim=-1)[..., self.category]

    def __repr__(self) -> str:
        return f"ClassifierOutputSoftmaxTarget({self.category})"


class BinaryClassifierOutputTarget:
    """For a model with one output logit: the logit for ``category == 1``, its negation for 0."""

    def __init__(self, category: int) -> None:
        if category not in (0, 1):
            raise ValueError(f"BinaryClassifierOutputTarget takes category 0 or 1, got {category!r}")
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if torch.is_tensor(model_output) and model_output.numel() != 1:
            raise ValueError(
                f"BinaryClassifierOutputTarget needs a model with one output logit per image, but this output "
                f"row has shape {tuple(model_output.shape)}; for a multi-class model use "
                "ClassifierOutputTarget(class_index) instead"
            )
        sign = 1.0 if self.category == 1 else -1.0
        return (model_output * sign).sum()


class SoftmaxOutputTarget:
    """All class probabilities ``softmax(model_output)`` over the last axis (a vector, not a scalar).

    For the metrics (e.g. ROAD, confidence changes), which compare the whole output before and
    after a perturbation; a CAM needs a scalar target such as ``ClassifierOutputSoftmaxTarget(k)``.
    """

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model_output, dim=-1)

    def __repr__(self) -> str:
        return "SoftmaxOutputTarget()"


class RawScoresOutputTarget:
    """The model output itself (all raw scores); for the metrics, as ``SoftmaxOutputTarget``."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output

    def __repr__(self) -> str:
        return "RawScoresOutputTarget()"


class SemanticSegmentationTarget:
    """Sum of the ``category`` logits over the pixels selected by ``mask`` (H, W)."""

    def __init__(self, category: int, mask: Union[np.ndarray, torch.Tensor]) -> None:
        self.category = int(category)
        self.mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).float()

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if model_output.ndim != 3:
            raise ValueError(
                "SemanticSegmentationTarget expects a per-image output of shape (classes, H, W), "
                f"got {tuple(model_output.shape)}; wrap the model so it returns the logit map"
            )
        if not 0 <= self.category < model_output.shape[0]:
            raise IndexError(
                f"target class {self.category} is outside the segmentation output's {model_output.shape[0]} classes"
            )
        if tuple(self.mask.shape) != tuple(model_output.shape[1:]):
            raise ValueError(
                f"mask shape {tuple(self.mask.shape)} differs from the output's spatial shape "
                f"{tuple(model_output.shape[1:])}"
            )
        mask = self.mask.to(model_output.device, model_output.dtype)
        return (model_output[self.category] * mask).sum()


class ClassifierOutputReST(ClassifierOutputTarget):
    """Logit plus log-probability of ``category``: ``y_k - CE(y, k) = y_k + log_softmax(y)_k``.

    Combines the pre-softmax score with the post-softmax one, so the explanation reflects both
    the evidence for the class and its competition with the others (pytorch-grad-cam's "ReST",
    https://arxiv.org/abs/2501.06261).
    """

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_category(self.category, model_output)
        return model_output[..., self.category] + torch.log_softmax(model_output, dim=-1)[..., self.category]

    def __repr__(self) -> str:
        return f"ClassifierOutputReST({self.category})"


class FasterRCNNBoxScoreTarget:
    """Detection score of reference boxes, for torchvision-style detectors.

    The model output of one image is a dict with ``boxes`` (N, 4; x1, y1, x2, y2), ``labels`` (N,)
    and ``scores`` (N,). For every reference box, the predicted box with the highest IoU is taken;
    if that IoU exceeds ``iou_threshold`` and its label equals the reference label, ``IoU + score``
    is added to the total (as in pytorch-grad-cam). No match scores 0.
    """

    def __init__(
        self,
        labels: Sequence[int],
        bounding_boxes: Union[np.ndarray, torch.Tensor, Sequence],
        iou_threshold: float = 0.5,
    ) -> None:
        boxes = torch.as_tensor(np.asarray(bounding_boxes) if not torch.is_tensor(bounding_boxes) else bounding_boxes)
        boxes = boxes.reshape(-1, 4) if boxes.numel() else boxes.reshape(0, 4)
        labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).reshape(-1)
        if labels.numel() != boxes.shape[0]:
            raise ValueError(f"got {labels.numel()} labels for {boxes.shape[0]} bounding boxes; pass one label per box")
        self.labels = labels
        self.bounding_boxes = boxes
        self.iou_threshold = float(iou_threshold)

    def __call__(self, model_outputs: dict) -> torch.Tensor:
        if not isinstance(model_outputs, dict) or not {"boxes", "labels", "scores"} <= set(model_outputs):
            raise TypeError(
                "FasterRCNNBoxScoreTarget expects one image's detection dict with 'boxes', 'labels' and "
                f"'scores' (torchvision detection output), got {type(model_outputs).__name__}"
            )
        from torchvision.ops import box_iou

        boxes = model_outputs["boxes"]
        total = torch.zeros((), device=boxes.device, dtype=boxes.dtype)
        if boxes.shape[0] == 0 or self.bounding_boxes.shape[0] == 0:
            return total + 0 * model_outputs["scores"].sum()
        reference = self.bounding_boxes.to(boxes.device, boxes.dtype)
        ious = box_iou(reference, boxes)  # (R, N)
        best_iou, best = ious.max(dim=1)
        matched = (best_iou > self.iou_threshold) & (
            model_outputs["labels"][best] == self.labels.to(model_outputs["labels"].device)
        )
        contrib = best_iou + model_outputs["scores"][best]
        return total + torch.where(matched, contrib, torch.zeros_like(contrib)).sum()


class SimilarityToConceptTarget:
    """Cosine similarity between an embedding model's output and a concept vector ``features``."""

    def __init__(self, features: Union[np.ndarray, torch.Tensor]) -> None:
        self.features = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(model_output):
            keys = f" with keys {sorted(model_output)}" if isinstance(model_output, dict) else ""
            raise TypeError(
                f"SimilarityToConceptTarget needs the embedding tensor of one image, got a "
                f"{type(model_output).__name__}{keys}; wrap the model so that it returns the embedding, e.g. "
                "lambda x: model(x)['embedding'] in an nn.Module"
            )
        out = model_output.reshape(-1)
        concept = self.features.reshape(-1).to(out.device, out.dtype)
        if out.numel() != concept.numel():
            raise ValueError(
                f"the embedding has {out.numel()} values but the concept vector has {concept.numel()}; "
                "pass a concept computed by the same model"
            )
        return torch.nn.functional.cosine_similarity(out, concept, dim=0)


class FinerWeightedTarget:
    """Finer-CAM's contrastive score: the main class against the classes it is confused with.

    Each comparison class k is weighted by its softmax probability p_k, so likelier confusions
    count more (pytorch-grad-cam's definition; the weights are part of the graph, not constants):

        score = sum_k p_k (y_main - alpha * y_k) / (sum_k p_k + 1e-9)

    which is ``y_main - alpha * (probability-weighted mean of the y_k)``. ``alpha = 0`` is the plain
    logit of ``main_category``; with no comparison classes the score is ``y_main`` too. Works on
    one output row (C,) or on a batch (..., C), returning a scalar or one score per row.
    Zhang et al., "Finer-CAM", CVPR 2025, https://arxiv.org/abs/2501.11309.
    """

    def __init__(self, main_category: int, comparison_categories: Sequence[int], alpha: float = 1.0) -> None:
        if isinstance(main_category, bool) or not isinstance(main_category, (int, np.integer)):
            raise TypeError(f"main_category must be an int class index, got {main_category!r}")
        if isinstance(comparison_categories, (int, np.integer)):
            raise TypeError(
                "comparison_categories must be a sequence of class indices, e.g. [12, 57], "
                f"got the single int {comparison_categories!r}"
            )
        comparisons = list(comparison_categories)
        for c in comparisons:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
                raise TypeError(f"comparison_categories must hold int class indices, got {c!r}")
        self.main_category = int(main_category)
        self.comparison_categories = [int(c) for c in comparisons]
        self.alpha = float(alpha)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_category(self.main_category, model_output)
        main = model_output[..., self.main_category]
        if not self.comparison_categories:
            return main
        for c in self.comparison_categories:
            _check_category(c, model_output)
        index = torch.tensor(self.comparison_categories, device=model_output.device)
        others = model_output.index_select(-1, index)
        weights = torch.softmax(model_output, dim=-1).index_select(-1, index)
        # The small constant keeps the score finite when every p_k underflows to 0.
        return (weights * (main[..., None] - self.alpha * others)).sum(dim=-1) / (weights.sum(dim=-1) + 1e-9)

    def __repr__(self) -> str:
        return f"FinerWeightedTarget({self.main_category}, {self.comparison_categories}, alpha={self.alpha})"
