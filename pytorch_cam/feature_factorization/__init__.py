"""Deep Feature Factorization: concepts shared by a batch, found by NMF of a layer's activations."""

from pytorch_cam.feature_factorization.deep_feature_factorization import (
    DeepFeatureFactorization,
    dff,
    run_dff_on_image,
)

__all__ = ["DeepFeatureFactorization", "dff", "run_dff_on_image"]
