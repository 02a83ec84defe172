"""SS-CAM and IS-CAM, Score-CAM with noise / integration: parity with torchcam, seeds, and SS-CAM
without noise equal to Score-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytorch_cam as pc
from pytorch_cam.utils.model_targets import ClassifierOutputTarget

TARGETS = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]


def _torchcam_score(base_pipeline, cls, model, layer, x, classes, seed=None, **kw):
    if seed is not None:
        torch.manual_seed(seed)
    with cls(model, layer, input_shape=tuple(x.shape[1:]), **kw) as extractor:
        with torch.no_grad():
            model(x)
        raw = extractor(class_idx=classes, normalized=False)[0]
    return base_pipeline(raw, x.shape[2:])


def test_sscam_matches_torchcam_with_the_same_noise(signed_cnn, x32, pearson, base_pipeline):
    from torchcam.methods import SSCAM as TorchcamSSCAM

    tiny = signed_cnn
    # One chunk holds every (image, channel) pair, so our generator draws the noise in torchcam's order.
    ours = pc.SSCAM(tiny, [tiny[4]], num_samples=8, std=2.0, seed=0, batch_size=1024, progress=False)
    theirs = _torchcam_score(
        base_pipeline, TorchcamSSCAM, tiny, tiny[4], x32, [1, 2], seed=0, num_samples=8, std=2.0, batch_size=1024
    )
    assert (pearson(ours(x32, TARGETS), theirs) >= 0.99).all()


def test_sscam_seed_and_zero_noise(signed_cnn, x32):
    tiny = signed_cnn

    def run(seed, std=2.0):
        return pc.SSCAM(tiny, [tiny[4]], num_samples=3, std=std, seed=seed, progress=False)(x32, TARGETS)

    assert np.array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))
    score = pc.ScoreCAM(tiny, [tiny[4]], progress=False)(x32, TARGETS)
    np.testing.assert_allclose(run(None, std=0.0), score, atol=1e-5)
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        pc.SSCAM(tiny, [tiny[4]], num_samples=0)


def test_iscam_matches_torchcam(signed_cnn, x32, pearson, base_pipeline):
    from torchcam.methods import ISCAM as TorchcamISCAM

    tiny = signed_cnn
    ours = pc.ISCAM(tiny, [tiny[4]], num_samples=10, progress=False)(x32, TARGETS)
    theirs = _torchcam_score(base_pipeline, TorchcamISCAM, tiny, tiny[4], x32, [1, 2], num_samples=10)
    assert (pearson(ours, theirs) >= 0.99).all()
