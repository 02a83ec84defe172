"""The metrics refuse maps and targets that would give a meaningless number."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytorch_cam.metrics import average_drop, pointing_game

X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
GOOD = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "maps, error, match",
    [
        ((GOOD * 255).to(torch.uint8), TypeError, "divide it by 255"),
        ((GOOD * 255).numpy().astype(np.uint8), TypeError, "divide it by 255"),
        (GOOD * 10 - 5, ValueError, r"in \[0, 1\]"),
        (torch.full((2, 16, 16), float("nan")), ValueError, "NaN"),
        (GOOD[0], ValueError, r"\(B, H, W\)"),
    ],
)
def test_confidence_metrics_reject_bad_maps(tiny_cnn, maps, error, match):
    with pytest.raises(error, match=match):
        average_drop(tiny_cnn(), X, maps, targets=[1, 2])


def test_localisation_metrics_reject_bad_maps_and_accept_lists_of_regions():
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, :8] = True
    with pytest.raises(ValueError, match="NaN"):
        pointing_game(torch.full((2, 16, 16), float("nan")), masks)
    with pytest.raises(ValueError, match="non-negative maps"):
        pointing_game(GOOD * 10 - 5, masks)
    as_list = pointing_game(GOOD, [m.numpy() for m in masks])
    assert torch.equal(as_list, pointing_game(GOOD, masks))
    boxes = pointing_game(GOOD, [[0, 0, 16, 8], [0, 0, 16, 8]])
    assert torch.equal(boxes, pointing_game(GOOD, masks))
    with pytest.raises(TypeError, match="regions must be boolean masks"):
        pointing_game(GOOD, "everywhere")


def test_negative_class_indices_follow_pythons_indexing(tiny_cnn):
    net = tiny_cnn()  # 5 classes
    assert torch.equal(average_drop(net, X, GOOD, targets=[-1, -5]), average_drop(net, X, GOOD, targets=[4, 0]))
    with pytest.raises(IndexError, match="outside the model output"):
        average_drop(net, X, GOOD, targets=[5, 0])
