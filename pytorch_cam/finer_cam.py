"""Finer-CAM: explain what sets the predicted class apart from the classes it is confused with.

Zhang, Gu, Chowdhury, Mai, Carlyn, Berger-Wolf, Su & Chao, "Finer-CAM: Spotting the Difference
Reveals Finer Details for Visual Explanation", CVPR 2025. https://arxiv.org/abs/2501.11309

A meta-method: any CAM method that explains a target score (Grad-CAM by default) explains the
contrast between the main class c and its nearest competitors d_k instead of the logit y_c, so
the evidence the classes share cancels and what tells them apart remains:

    score = sum_k p_k (y_c - alpha y_{d_k}) / sum_k p_k          (p = softmax(y), see FinerWeightedTarget)
    L     = base_method's map of that score

The competitors d_k are the classes whose logits are closest to y_c: the classes sorted by
|y_d - y_c| (c itself first, at position 0), taken at positions ``comparison_categories``
(default 1, 2, 3; positions past the number of classes are dropped). ``alpha`` sets the strength
of the comparison: 0 gives the base method's map of y_c, 1 (the default) the full difference.
The competitors are picked from the same forward pass that is explained, batched over images.
"""

from __future__ import annotations

from functools import cache
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from pytorch_cam.base_cam import TargetLike
from pytorch_cam.grad_cam import GradCAM
from pytorch_cam.meta_cam import MetaCAM, check_base_method
from pytorch_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget

#: positions (in the order of closeness to the main class) of the default comparison classes
DEFAULT_COMPARISON_CATEGORIES = (1, 2, 3)


def check_positions(comparison_categories: Optional[Sequence[int]]) -> Optional[List[int]]:
    if comparison_categories is None:
        return None
    if isinstance(comparison_categories, (int, np.integer)):
        raise TypeError(
            "comparison_categories must be a sequence of positions in the closeness order, e.g. (1, 2, 3), "
            f"got the single int {comparison_categories!r}; wrap it in a list"
        )
    positions = list(comparison_categories)
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0:
            raise ValueError(
                "comparison_categories are positions in the order of closeness to the main class "
                f"(0 is the main class itself, 1 the closest other class); got {p!r}"
            )
    return [int(p) for p in positions]


def finer_targets(
    outputs: torch.Tensor,
    main: torch.Tensor,
    comparison_categories: Optional[Sequence[int]],
    alpha: float,
) -> List[FinerWeightedTarget]:
    """One ``FinerWeightedTarget`` per row of ``outputs`` (B, classes) for the main classes ``main`` (B,).

    The comparison classes are the ones whose logits are closest to the main class's, at the
    given positions of that order (the main class is position 0), for all rows at once.
    """
    if not torch.is_tensor(outputs) or outputs.ndim != 2:
        shape = tuple(outputs.shape) if torch.is_tensor(outputs) else type(outputs).__name__
        raise ValueError(
            f"FinerCAM picks comparison classes from a (B, classes) classifier output; this model returns "
            f"{shape}. Pass explicit FinerWeightedTarget targets instead"
        )
    scores = outputs.detach()
    n_classes = scores.shape[1]
    main = main.to(scores.device).long()
    bad = (main < 0) | (main >= n_classes)
    if bool(bad.any()):
        raise IndexError(
            f"main class {main[bad][0].item()} is outside the model output, which has {n_classes} classes "
            f"(valid: 0..{n_classes - 1}); pass a class index the model actually predicts"
        )
    positions = check_positions(comparison_categories)
    if positions is None:
        positions = list(DEFAULT_COMPARISON_CATEGORIES[: max(n_classes - 1, 0)])
    positions = [p for p in positions if p < n_classes]
    mains = main.tolist()
    if not positions:
        return [FinerWeightedTarget(m, [], alpha) for m in mains]
    distance = (scores - scores.gather(1, main[:, None])).abs()
    # The main class always comes first, even when another class ties with it.
    distance.scatter_(1, main[:, None], -1.0)
    order = distance.argsort(dim=1, stable=True)[:, : max(positions) + 1]
    comparisons = order[:, positions].tolist()
    return [FinerWeightedTarget(m, c, alpha) for m, c in zip(mains, comparisons)]


class FinerRequest:
    """A placeholder target: "Finer-CAM of ``main_category`` (None: the top class)".

    FinerCAM's base CAM replaces it, for a whole batch at once, with a ``FinerWeightedTarget``
    whose comparison classes come from the forward pass being explained. Called directly on an
    output row it picks them from that row.
    """

    def __init__(self, main_category: Optional[int], comparison_categories: Optional[Sequence[int]], alpha: float):
        self.main_category = main_category
        self.comparison_categories = comparison_categories
        self.alpha = alpha

    def main_of(self, row: torch.Tensor) -> int:
        if self.main_category is not None:
            return self.main_category
        return int(row.detach().argmax(dim=-1))

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        row = model_output.reshape(1, -1)
        main = torch.tensor([self.main_of(row[0])], device=row.device)
        return finer_targets(row, main, self.comparison_categories, self.alpha)[0](model_output.reshape(-1))

    def __repr__(self) -> str:
        return f"FinerRequest({self.main_category}, {self.comparison_categories}, alpha={self.alpha})"


def resolve_requests(targets: list, outputs: Any) -> list:
    """Replace every ``FinerRequest`` of a resolved target list by its ``FinerWeightedTarget``."""
    slots = [i for i, t in enumerate(targets) if isinstance(t, FinerRequest)]
    if not slots:
        return targets
    if not torch.is_tensor(outputs) or outputs.ndim != 2:
        finer_targets(outputs, torch.zeros(0), None, 1.0)  # raises the explanatory error
    requests = [targets[i] for i in slots]
    rows = outputs.detach()[slots]
    top = rows.argmax(dim=1)
    given = torch.tensor([-1 if r.main_category is None else r.main_category for r in requests], device=rows.device)
    main = torch.where(given >= 0, given, top)
    resolved = list(targets)
    # Requests of one call share their options; group them anyway so mixed lists stay correct.
    groups: dict = {}
    for j, r in enumerate(requests):
        key = (None if r.comparison_categories is None else tuple(r.comparison_categories), r.alpha)
        groups.setdefault(key, []).append(j)
    for (positions, alpha), members in groups.items():
        index = torch.tensor(members, device=rows.device)
        made = finer_targets(rows[index], main[index], positions, alpha)
        for j, t in zip(members, made):
            resolved[slots[j]] = t
    return resolved


@cache
def finer_variant(base_method: type) -> type:
    """``base_method`` with Finer-CAM's targets resolved from the explained forward pass.

    BaseCAM turns targets into callables right after the forward (``_resolve_targets``); the
    variant does the same and then swaps the placeholders for their Finer targets, so the
    comparison classes come from the pass that is explained and the model runs once.
    """

    class Variant(base_method):
        def _resolve_targets(self, targets, outputs, n):
            return resolve_requests(super()._resolve_targets(targets, outputs, n), outputs)

    Variant.__name__ = Variant.__qualname__ = f"Finer{base_method.__name__}"
    Variant.display_name = f"FinerCAM({base_method.__name__})"
    Variant.__module__ = __name__
    return Variant


class FinerCAM(MetaCAM, name="finercam"):
    """Finer-CAM on top of any target-driven CAM method.

    Args:
        model, target_layers, reshape_transform: as for every method (see ``BaseCAM``).
        base_method: the CAM class that explains the contrastive score (a ``BaseCAM`` subclass
            of this package, e.g. ``GradCAM``, ``HiResCAM``, ``ScoreCAM``); extra keyword
            arguments are passed to it.

    Targets (``forward``):
        - ``None``: each image's main class is its top class (or ``target_idx`` for all images)
          and the comparison classes are picked automatically.
        - ``ClassifierOutputTarget(k)`` or an int ``k``: ``k`` is the main class and the
          comparison classes are picked automatically, as for ``None`` (so the command line's
          ``--target-class`` means the main class). Subclasses such as
          ``ClassifierOutputSoftmaxTarget`` are explained as given.
        - ``FinerWeightedTarget(main, comparisons, alpha)`` or any other callable: used as given.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[Sequence[nn.Module], nn.Module, None],
        reshape_transform: Any = None,
        base_method: type = GradCAM,
        **kwargs: Any,
    ) -> None:
        self.base_method = check_base_method(base_method)
        self.base_cam = finer_variant(base_method)(model, target_layers, reshape_transform=reshape_transform, **kwargs)

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[Sequence[TargetLike]] = None,
        eigen_smooth: bool = False,
        alpha: float = 1,
        comparison_categories: Optional[Sequence[int]] = None,
        target_idx: Optional[int] = None,
        aug_smooth: bool = False,
    ) -> np.ndarray:
        """One Finer-CAM map per image: numpy float32 (B, H, W) in [0, 1].

        ``alpha``, ``comparison_categories`` and ``target_idx`` apply to the targets that FinerCAM
        completes (``None``, ints and ``ClassifierOutputTarget``); ``target_idx`` only with
        ``targets=None``. With ``aug_smooth`` the comparison classes are picked once on the
        un-augmented image and kept for every augmented copy.
        """
        positions = check_positions(comparison_categories)
        if target_idx is not None and (isinstance(target_idx, bool) or not isinstance(target_idx, (int, np.integer))):
            raise TypeError(f"target_idx must be an int class index or None, got {target_idx!r}")
        base = self.base_cam
        x = base._check_input(input_tensor)
        n = x.shape[0]
        if targets is None:
            main = None if target_idx is None else int(target_idx)
            requests: list = [FinerRequest(main, positions, alpha) for _ in range(n)]
        else:
            if isinstance(targets, (int, np.integer)) or callable(targets):
                raise TypeError("targets must be a list with one target per image, e.g. [ClassifierOutputTarget(281)]")
            requests = []
            for t in targets:
                if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
                    requests.append(FinerRequest(int(t), positions, alpha))
                elif type(t) is ClassifierOutputTarget:
                    requests.append(FinerRequest(t.category, positions, alpha))
                else:
                    requests.append(t)
        base.ensure_layers(x)
        if aug_smooth and any(isinstance(t, FinerRequest) for t in requests):
            # Pick the comparison classes on the original image, not on each augmented copy.
            with base._eval_mode(), torch.no_grad():
                outputs = base.model(x)
            requests = base._resolve_targets(requests, outputs, n)
            del outputs
        return base.forward(x, requests, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
