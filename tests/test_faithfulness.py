"""Faithfulness against ground truth: the synthetic scenes (pytorch_cam.utils.scenes), the
committed scenes models, GradCAM vs a random baseline, and pytorch_cam.metrics.faithfulness."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from pytorch_cam import GradCAM
from pytorch_cam.methods import METHODS
from pytorch_cam.metrics import pointing_game
from pytorch_cam.metrics.faithfulness import ORACLE, RANDOM, evaluate_faithfulness, format_table, save_grid
from pytorch_cam.utils.scenes import CLASSES, accuracy, generate_scenes


@pytest.fixture(scope="module")
def test_scenes():
    return generate_scenes(300, seed=0)


def evaluate(model, n: int, methods, **kwargs):
    """``evaluate_faithfulness`` on the first ``n`` scenes of seed 0 at ``model.target_layer``."""
    images, labels, masks = generate_scenes(n, seed=0)
    return evaluate_faithfulness(model, images, labels, masks, methods, target_layers=[model.target_layer], **kwargs)


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


def test_committed_model_is_loaded_and_accurate(scenes_cnn, scenes_weights, test_scenes):
    assert scenes_weights["cnn"].is_file(), "the trained CNN must be committed so fresh clones skip training"
    assert not scenes_cnn.training
    images, labels, _ = test_scenes
    assert accuracy(scenes_cnn, images, labels) >= 0.95


def _gradcam_maps(model, images, labels):
    with GradCAM(model=model, target_layers=[model.target_layer]) as cam:
        return torch.from_numpy(cam(input_tensor=images, targets=labels.tolist()))


def test_gradcam_points_at_the_object(scenes_cnn, test_scenes):
    images, labels, masks = (t[:120] for t in test_scenes)
    # 2 px tolerance (the benchmark's default): a 16x16 map cannot always peak on a thin ring
    assert float(pointing_game(_gradcam_maps(scenes_cnn, images, labels), masks, tolerance=2).mean()) >= 0.9


def test_random_baseline_is_near_chance(scenes_cnn, test_scenes):
    model = scenes_cnn
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


def test_evaluation_rows_are_reproducible_and_bracketed(scenes_cnn):
    rows, examples = evaluate(scenes_cnn, 6, ["gradcam"], steps=4, percentiles=(50,))
    again, _ = evaluate(scenes_cnn, 6, ["gradcam"], steps=4, percentiles=(50,))
    strip = [{k: v for k, v in r.items() if k != "ms"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "ms"} for r in again]
    by_name = {r["method"]: r for r in rows}
    oracle = by_name["(oracle: ground-truth mask)"]
    assert oracle["pointing"] == 1.0 and oracle["energy"] == 1.0
    assert set(by_name) == {"(oracle: ground-truth mask)", "(baseline: uniform random)", "gradcam"}
    assert (ORACLE, RANDOM) == ("(oracle: ground-truth mask)", "(baseline: uniform random)")
    assert examples["gradcam"].shape == (6, 64, 64)
    table = format_table(rows)
    assert table.splitlines()[0].startswith("| Method | Pointing game ↑")
    assert len(table.splitlines()) == 2 + 3


def test_committed_vit_is_accurate_and_explained_without_a_reshape(scenes_vit, scenes_weights, test_scenes):
    assert scenes_weights["vit"].is_file(), "the trained ViT must be committed so fresh clones skip training"
    vit = scenes_vit
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


def test_evaluation_runs_on_the_vit(scenes_vit):
    rows, examples = evaluate(scenes_vit, 4, ["gradcam", "scorecam"], steps=4, percentiles=(50,))
    assert [r["method"] for r in rows][2:] == ["gradcam", "scorecam"]
    assert all("error" not in r for r in rows)
    assert examples["scorecam"].shape == (4, 64, 64)


def test_examples_only_gives_the_full_runs_examples_and_a_grid(scenes_cnn, tmp_path):
    _, examples = evaluate(scenes_cnn, 6, ["gradcam", "randomcam"], steps=4, percentiles=(50,))
    grid = tmp_path / "grid.png"
    rows, quick = evaluate(scenes_cnn, 6, ["gradcam", "randomcam"], examples_only=True)
    assert rows == []  # no metrics were computed
    assert set(quick) == set(examples)
    for name in examples:
        np.testing.assert_array_equal(quick[name], examples[name])
    images, labels, masks = generate_scenes(6, seed=0)
    save_grid(grid, quick, images, masks, labels, class_names=CLASSES)
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_method_is_a_row_not_an_exception(scenes_cnn):
    # CAM's class weights take the 64 channels of features[-1], not the 32 of features[9].
    images, labels, masks = generate_scenes(2, seed=0)
    rows, examples = evaluate_faithfulness(
        scenes_cnn, images, labels, masks, ["cam", "gradcam"], target_layers=[scenes_cnn.features[9]], steps=2
    )
    assert [r["method"] for r in rows][2:] == ["gradcam", "cam"]  # failures come last
    assert rows[-1]["error"].startswith("ValueError: fc_layer takes 64 features but the target layer has 32")
    assert "cam" not in examples and examples["gradcam"].shape == (2, 64, 64)
    table = format_table(rows).splitlines()
    assert table[-1].startswith("| cam | failed: ValueError: fc_layer takes 64") and table[-1].count("|") == 12


def test_precision_reaches_the_methods_and_the_metrics(scenes_cnn, monkeypatch):
    from pytorch_cam.metrics import faithfulness

    assert (
        faithfulness.build_method("gradcam", scenes_cnn, [scenes_cnn.target_layer], precision="bf16").precision
        == "bf16"
    )
    assert faithfulness.build_method("scorecam", scenes_cnn, [scenes_cnn.target_layer]).precision == "fp32"
    seen = []
    real = faithfulness.road_score
    monkeypatch.setattr(faithfulness, "road_score", lambda *a, **k: seen.append(k["precision"]) or real(*a, **k))
    fp32, _ = evaluate(scenes_cnn, 4, ["gradcam"], steps=4, percentiles=(50,))
    bf16, _ = evaluate(scenes_cnn, 4, ["gradcam"], steps=4, percentiles=(50,), precision="bf16")
    assert seen == ["fp32"] * 3 + ["bf16"] * 3  # oracle, random, gradcam
    for a, b in zip(fp32, bf16):
        assert a["method"] == b["method"]
        for key in ("deletion", "insertion", "road"):  # bf16 forwards: probabilities within ~0.01
            assert abs(a[key] - b[key]) < 0.02, (a["method"], key)
    with pytest.raises(ValueError, match="precision must be 'fp32'"):
        evaluate(scenes_cnn, 2, ["gradcam"], precision="fp8")


def test_evaluation_errors(scenes_cnn):
    images, labels, masks = generate_scenes(2, seed=0)
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['nosuch'\]; choose from"):
        evaluate_faithfulness(scenes_cnn, images, labels, masks, ["gradcam", "nosuch"])
    with pytest.raises(ValueError, match="got 2 images, 2 labels and 1 masks; pass one label and one mask per image"):
        evaluate_faithfulness(scenes_cnn, images, labels, masks[:1], ["gradcam"])
    with pytest.raises(ValueError, match="images is empty"):
        evaluate_faithfulness(scenes_cnn, images[:0], labels[:0], masks[:0], ["gradcam"])


def test_save_grid_without_matplotlib_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import matplotlib.figure -> ImportError
    images, labels, masks = generate_scenes(1, seed=0)
    with pytest.raises(ImportError, match="save_grid draws with matplotlib.*pip install matplotlib"):
        save_grid(tmp_path / "grid.png", {}, images, masks)
    assert not (tmp_path / "grid.png").exists()
