"""The ground-truth benchmark: scenes, the committed CNN, and GradCAM vs a random baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.faithfulness import Config, format_table, run, save_grid
from benchmarks.scenes import (
    CLASSES,
    DEFAULT_MODEL_PATH,
    DEFAULT_VIT_PATH,
    accuracy,
    generate_scenes,
    load_trained_cnn,
    load_trained_vit,
)
from pytorch_cam import GradCAM
from pytorch_cam.methods import METHODS
from pytorch_cam.metrics import pointing_game


@pytest.fixture(scope="module")
def model():
    return load_trained_cnn()


@pytest.fixture(scope="module")
def test_scenes():
    return generate_scenes(300, seed=0)


def test_scenes_are_deterministic_and_well_formed():
    a = generate_scenes(20, seed=5, size=48)
    b = generate_scenes(20, seed=5, size=48)
    c = generate_scenes(20, seed=6, size=48)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    images, labels, masks = a
    assert images.shape == (20, 3, 48, 48) and images.dtype == torch.float32
    assert labels.shape == (20,) and labels.dtype == torch.long
    assert masks.shape == (20, 48, 48) and masks.dtype == torch.bool
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert 0 <= int(labels.min()) and int(labels.max()) < len(CLASSES)
    area = masks.float().mean(dim=(1, 2))
    assert bool((area > 0.01).all()) and bool((area < 0.5).all())


def test_generate_scenes_errors():
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        generate_scenes(-1, seed=0)
    with pytest.raises(ValueError, match="size must be an int >= 16"):
        generate_scenes(2, seed=0, size=8)


def test_committed_model_is_loaded_and_accurate(model, test_scenes):
    assert DEFAULT_MODEL_PATH.is_file(), "the trained CNN must be committed so fresh clones skip training"
    assert not model.training
    images, labels, _ = test_scenes
    assert accuracy(model, images, labels) >= 0.95


def _gradcam_maps(model, images, labels):
    with GradCAM(model=model, target_layers=[model.target_layer]) as cam:
        return torch.from_numpy(cam(input_tensor=images, targets=labels.tolist()))


def test_gradcam_points_at_the_object(model, test_scenes):
    images, labels, masks = (t[:120] for t in test_scenes)
    # 2 px tolerance (the benchmark's default): a 16x16 map cannot always peak on a thin ring
    assert float(pointing_game(_gradcam_maps(model, images, labels), masks, tolerance=2).mean()) >= 0.9


def test_random_baseline_is_near_chance(model, test_scenes):
    images, labels, masks = (t[:120] for t in test_scenes)
    chance = float(masks.float().mean())  # P(a uniformly random pixel is on the object)
    if "randomcam" in METHODS:
        with METHODS["randomcam"](model=model, target_layers=[model.target_layer], seed=0) as cam:
            maps = torch.from_numpy(cam(input_tensor=images, targets=labels.tolist()))
        # Random channel weights still multiply object-centred activations, so RandomCAM lands
        # above pure chance (measured 0.57 at 2 px vs 0.96 for GradCAM); it must stay well below.
        random_pg = float(pointing_game(maps, masks, tolerance=2).mean())
        gradcam_pg = float(pointing_game(_gradcam_maps(model, images, labels), masks, tolerance=2).mean())
        assert random_pg <= gradcam_pg - 0.25
    uniform = torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    assert abs(float(pointing_game(uniform, masks).mean()) - chance) < 0.08


def test_benchmark_rows_are_reproducible_and_bracketed():
    cfg = Config(n=6, methods=["gradcam"], grid=None, steps=4, percentiles=(50,))
    rows, examples, _ = run(cfg)
    again, _, _ = run(cfg)
    strip = [{k: v for k, v in r.items() if k != "ms"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "ms"} for r in again]
    by_name = {r["method"]: r for r in rows}
    oracle = by_name["(oracle: ground-truth mask)"]
    assert oracle["pointing"] == 1.0 and oracle["energy"] == 1.0
    assert set(by_name) == {"(oracle: ground-truth mask)", "(baseline: uniform random)", "gradcam"}
    assert examples["gradcam"].shape == (6, 64, 64)
    table = format_table(rows)
    assert table.splitlines()[0].startswith("| Method | Pointing game ↑")
    assert len(table.splitlines()) == 2 + 3


def test_committed_vit_is_accurate_and_explained_without_a_reshape(test_scenes):
    assert DEFAULT_VIT_PATH.is_file(), "the trained ViT must be committed so fresh clones skip training"
    vit = load_trained_vit()
    images, labels, masks = test_scenes
    # 0.9505 on 2000 scenes, 0.947 on these 300: the ViT sits at the edge of the CNN's 95 % bar
    # (docs/faithfulness.md); this pins the committed weights, not the bar.
    assert accuracy(vit, images, labels) >= 0.94
    images, labels, masks = images[:120], labels[:120], masks[:120]
    # No reshape_transform and no target layer: the block's norm and the token grid are inferred.
    with GradCAM(model=vit, target_layers=None) as cam:
        maps = torch.from_numpy(cam(input_tensor=images, targets=labels.tolist()))
    assert maps.shape == (120, 64, 64)
    # Measured 0.37 on an 8x8 token grid, against 0.09 for a uniformly random pixel.
    chance = float(masks.float().mean())
    assert float(pointing_game(maps, masks, tolerance=2).mean()) >= chance + 0.2


def test_benchmark_runs_on_the_vit():
    rows, examples, _ = run(
        Config(n=4, methods=["gradcam", "scorecam"], model="vit", grid=None, steps=4, percentiles=(50,))
    )
    assert [r["method"] for r in rows][2:] == ["gradcam", "scorecam"]
    assert all("error" not in r for r in rows)
    assert examples["scorecam"].shape == (4, 64, 64)


def test_grid_only_draws_the_full_runs_examples(tmp_path):
    full = Config(n=6, methods=["gradcam", "randomcam"], grid=None, steps=4, percentiles=(50,))
    _, examples, _ = run(full)
    grid = tmp_path / "grid.png"
    rows, quick, scenes = run(Config(n=6, methods=["gradcam", "randomcam"], grid=grid, grid_only=True))
    assert rows == []  # no metrics were computed
    assert set(quick) == set(examples)
    for name in examples:
        np.testing.assert_array_equal(quick[name], examples[name])
    save_grid(grid, quick, scenes)
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
