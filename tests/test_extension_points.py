"""The seams a method is written against: registry, per-layer context, perturbation base, inferred settings."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import pytorch_cam
from pytorch_cam import BaseCAM, GradCAM, LayerContext, PerturbationCAM
from pytorch_cam.methods import BATCHED, METHODS
from pytorch_cam.registry import REGISTRY

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_every_method_is_registered_exported_and_named_by_its_class():
    assert METHODS == dict(sorted(REGISTRY.items()))
    for name, cls in METHODS.items():
        assert cls.cli_name == name
        assert getattr(pytorch_cam, cls.__name__) is cls and cls.__name__ in pytorch_cam.__all__
    assert BATCHED == {n for n, c in METHODS.items() if c.batched}
    # Every perturbation method is batched; so is SESS, a wrapper that explains patches in batches.
    assert {n for n, c in METHODS.items() if issubclass(c, PerturbationCAM)} <= BATCHED
    assert {"scorecam", "sscam", "iscam", "ablationcam", "sess"} <= BATCHED


def test_perturbation_methods_share_one_batch_size_default():
    defaults = {
        n: inspect.signature(c.__init__).parameters["batch_size"].default
        for n, c in METHODS.items()
        if issubclass(c, PerturbationCAM)
    }
    assert len(defaults) >= 4
    assert set(defaults.values()) == {"auto"}, defaults
    # Gradient methods have no batching at all.
    assert "batch_size" not in inspect.signature(BaseCAM.__init__).parameters


def test_a_new_method_is_one_class_statement(tiny_cnn):
    class Doubled(GradCAM, name="test-doubled-gradcam"):
        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            return 2 * super().get_cam_weights(input_tensor, target_layer, targets, activations, grads)

    try:
        assert REGISTRY["test-doubled-gradcam"] is Doubled and not Doubled.batched
        model = tiny_cnn()
        # A positive scale of the weights leaves the scaled map unchanged.
        np.testing.assert_allclose(
            Doubled(model, [model.features])(X, [1, 2]), GradCAM(model, [model.features])(X, [1, 2])
        )
        with pytest.raises(ValueError, match="method name 'test-doubled-gradcam' is taken"):

            class Other(GradCAM, name="test-doubled-gradcam"):
                pass

        # A subclass without name= is a user's tweak, not a new CLI method.
        class Tweak(GradCAM):
            pass

        assert Tweak.cli_name is None and "gradcam" in REGISTRY and REGISTRY["gradcam"] is GradCAM
    finally:
        REGISTRY.pop("test-doubled-gradcam", None)


def test_layer_context_carries_index_so_a_layer_listed_twice_is_explained_twice(tiny_cnn):
    model = tiny_cnn()
    seen = []

    class Spy(GradCAM):
        def layer_weights(self, ctx: LayerContext) -> torch.Tensor:
            seen.append((ctx.index, ctx.layer, ctx.activations.shape, ctx.grads.shape, ctx.target_scores.shape))
            assert ctx.call.raw_activations[ctx.index] is ctx.raw_activations
            return super().layer_weights(ctx)

    Spy(model, [model.conv1, model.features, model.conv1])(X, [1, 2])
    assert [s[0] for s in seen] == [0, 1, 2]
    assert seen[0][1] is model.conv1 and seen[2][1] is model.conv1 and seen[1][1] is model.features
    assert seen[0][2] == (2, 8, 32, 32) and seen[1][2] == (2, 16, 16, 16) and seen[0][4] == (2,)
    # Layers at the input's resolution, so no resizing blurs the closed form below.
    twice = GradCAM(model, [model.conv1, model.relu1, model.conv1])(X, [1, 2])
    once = GradCAM(model, [model.conv1, model.relu1])(X, [1, 2])
    single = GradCAM(model, [model.conv1])(X, [1, 2])
    relu = GradCAM(model, [model.relu1])(X, [1, 2])
    # The mean of three maps, conv1 counted twice (then rescaled per image).
    expected = (2 * single + relu) / 3
    lo, hi = expected.min(axis=(1, 2), keepdims=True), expected.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(twice, (expected - lo) / (hi - lo), atol=1e-5)
    assert not np.allclose(twice, once, atol=1e-3)


def test_inferred_settings_are_kept_apart_and_inspectable(resnet18):
    cam = GradCAM(resnet18, target_layers=None)
    assert cam.target_layers is None and cam.inferred.target_layers is None and cam.layers == []
    cam(torch.randn(1, 3, 64, 64), [1])
    assert cam.target_layers is None and cam.reshape_transform is None
    assert cam.inferred.target_layers == [resnet18.layer4[-1]] and cam.layers == [resnet18.layer4[-1]]
    assert cam.inferred.reshape_transforms == {0: None}  # a CNN layer needs none


def test_auto_batch_cache_belongs_to_the_cam_object(tiny_cnn):
    model = tiny_cnn()
    a = pytorch_cam.ScoreCAM(model, [model.features], progress=False)
    b = pytorch_cam.AblationCAM(model, [model.features], progress=False)
    a(X, [1, 2])
    b(X, [1, 2])
    assert a.auto_batch_sizes and b.auto_batch_sizes
    assert a.auto_batch_sizes.keys().isdisjoint(b.auto_batch_sizes.keys())
    assert "_auto_batch" not in vars(a) and "_auto_batch" not in vars(model)


def test_seeded_sscam_repeats_exactly_with_auto_batch_size(tiny_cnn):
    model = tiny_cnn()
    runs = [pytorch_cam.SSCAM(model, [model.features], seed=3, num_samples=2, progress=False)(X, [1, 2]) for _ in "ab"]
    np.testing.assert_array_equal(*runs)
