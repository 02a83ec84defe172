"""The usage examples run offline (random weights), write their PNGs, and produce the maps they should."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "usage_examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, argv, size",
    [
        ("vit_example", ["--image-size", "64"], (64, 64)),
        ("swinT_example", ["--height", "64", "--width", "96"], (64, 96)),
        ("cnn_example", ["--image-size", "64", "--target-layer", "default"], (64, 64)),
    ],
)
def test_example_writes_overlay(tmp_path, capsys, name, argv, size):
    out = tmp_path / f"{name}.png"
    maps = _load(name).main(["--weights", "none", "--output", str(out), *argv])
    assert "random weights" in capsys.readouterr().out
    assert maps.shape == (1, *size)
    assert maps.min() == 0.0 and maps.max() == 1.0  # a real map, not a constant one
    png = cv2.imread(str(out))
    assert png is not None and png.shape == (*size, 3)


def test_example_reports_a_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="could not read an image"):
        _load("cnn_example").main(["--weights", "none", "--image-path", str(tmp_path / "nope.png")])


def test_examples_write_into_cam_output_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _load("cnn_example").main(["--weights", "none", "--image-size", "32"])
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")] == ["cam_output/cnn_cam.png"]


@pytest.mark.parametrize("name", ["cnn_example", "swinT_example", "vit_example"])
def test_examples_fail_offline_with_one_line(tmp_path, name):
    import os
    import subprocess
    import sys

    # No cached weights and no network (a proxy that refuses): the docstring's first command must not
    # end in a traceback.
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("Downloading:")]
    assert len(lines) == 1 and lines[0].startswith("error: could not load the pretrained weights"), done.stderr
    assert "--weights none" in lines[0] and "Traceback" not in done.stderr


# ---------------------------------------------------------------- models whose output is not (B, classes)
# Each example runs in-process through its main() at a small size, and its maps are checked against a
# property a wrong map would break (a planted box, a wrapper's map, a closed form).
def _valid(maps, shape) -> None:
    assert maps.shape == shape and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() == pytest.approx(1.0)


def test_yolo_style_example_finds_the_planted_box(tmp_path, capsys):
    module = _load("yolo_style")
    first_box, second_box = (64, 24, 120, 80), (8, 72, 48, 120)  # disjoint, more than two cells apart
    first = module.main(["--output-dir", str(tmp_path), "--box", *map(str, first_box)])
    out = capsys.readouterr().out
    # GradCAM without targets explains why and what to pass
    assert "GradCAM without targets" in out and "a tuple of 2 items" in out and "callable" in out
    assert f"wrote eigencam.png, gradcam.png to {tmp_path}" in out
    second = module.main(["--output-dir", str(tmp_path), "--box", *map(str, second_box)])
    margin = 2 * module.TinyYOLO.stride
    for method in ("eigencam", "gradcam"):
        _valid(first[method], (1, 128, 128))
        # all the evidence is at the photo, and the map moves with it
        assert module.box_energy(first[method][0], first_box, margin) > 0.99
        assert module.box_energy(second[method][0], second_box, margin) > 0.99
        assert module.box_energy(first[method][0], second_box) == 0.0
        assert cv2.imread(str(tmp_path / f"{method}.png")).shape == (128, 128, 3)


def test_yolo_style_example_runs_as_a_script(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "yolo_style.py"), "--image-size", "64", "--box", "8", "8", "40", "40"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote eigencam.png, gradcam.png to cam_output/yolo_style" in done.stdout
    assert sorted(p.name for p in (tmp_path / "cam_output" / "yolo_style").iterdir()) == ["eigencam.png", "gradcam.png"]


def test_segmentation_example_equals_the_wrapped_model(tmp_path, capsys):
    import torch

    from pytorch_cam import GradCAM
    from pytorch_cam.utils.image import load_image, preprocess_image
    from pytorch_cam.utils.model_targets import SemanticSegmentationTarget

    module = _load("segmentation")
    result = module.main(["--image-size", "64", "--output-dir", str(tmp_path)])
    assert f"wrote gradcam.png and mask.png to {tmp_path}" in capsys.readouterr().out
    _valid(result["maps"], (1, 64, 64))
    assert result["mask"].shape == (64, 64) and 0 < result["mask"].sum()
    # The dict output was explained as a wrapper returning model(x)["out"] is: the same map, exactly.
    model = module.build_model("deeplabv3_resnet50", "none").eval()
    image = cv2.resize(load_image(str(module.DEFAULT_IMAGE)), (64, 64), interpolation=cv2.INTER_AREA)
    x = preprocess_image(image, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

    class Out(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, t):
            return self.model(t)["out"]

    target = SemanticSegmentationTarget(result["category"], result["mask"])
    np.testing.assert_array_equal(result["maps"], GradCAM(Out(), [model.backbone.layer4])(x, [target]))


def test_detection_example(tmp_path, capsys, base_pipeline):
    import torch

    from pytorch_cam.utils.reshape_transforms import fasterrcnn_reshape_transform

    module = _load("detection_fasterrcnn")
    argv = ["--image-size", "160", "--ablation-ratio", "0.002", "--max-boxes", "2", "--output-dir", str(tmp_path)]
    result = module.main(argv)
    out = capsys.readouterr().out
    assert f"wrote eigencam.png, gradcam.png, ablationcam.png to {tmp_path}" in out
    assert result["boxes"].shape == (2, 4) and result["labels"].shape == (2,)
    for method in module.METHODS:
        _valid(result["maps"][method], (1, 160, 160))
        assert f"{method}: " in out and "of the map inside the boxes" in out
    assert np.abs(result["maps"]["gradcam"] - result["maps"]["eigencam"]).max() > 0.05
    # EigenCAM: the first principal component of the merged FPN levels of the example's own model
    model = result["model"]
    store = {}
    handle = model.backbone.register_forward_hook(lambda m, i, o: store.__setitem__("f", o))
    with torch.no_grad():
        model(result["input"])
    handle.remove()
    merged = fasterrcnn_reshape_transform(store["f"])[0].double().numpy()
    flat = merged.reshape(merged.shape[0], -1).T
    centred = flat - flat.mean(axis=0)
    proj = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    proj = -proj if abs(proj.min()) > abs(proj.max()) else proj
    expected = base_pipeline(torch.from_numpy(proj.reshape(1, *merged.shape[1:])).float(), (160, 160))
    np.testing.assert_allclose(result["maps"]["eigencam"], expected, atol=1e-5)


def test_embeddings_example_each_concept_leans_to_its_half(tmp_path, capsys):
    module = _load("embeddings_similarity")
    maps = module.main(["--output-dir", str(tmp_path)])  # 224 px, where the random-weight demo separates
    assert f"wrote photo_concept.png, texture_concept.png to {tmp_path}" in capsys.readouterr().out
    left = {}
    for name in ("photo", "texture"):
        _valid(maps[name], (1, 224, 224))
        left[name] = maps[name][0][:, :112].sum() / maps[name][0].sum()
    assert left["photo"] > 0.5 > left["texture"]


def test_huggingface_example(tmp_path, capsys):
    from pytorch_cam.utils.find_layers import module_name
    from pytorch_cam.utils.hf_models import hf_target_layers

    module = _load("huggingface")
    maps = module.main(["--image-size", "32", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert sorted(maps) == ["convnext_gradcam", "dinov2_eigencam", "dinov2_gradcam", "swin_gradcam", "vit_gradcam"]
    for key, cam_map in maps.items():
        _valid(cam_map, (1, 32, 32))
        assert cv2.imread(str(tmp_path / f"{key}.png")).shape == (32, 32, 3)
    for name in module.MODELS:  # the layer target_layers=None chose is the HF model's
        model, _ = module.tiny_model(name, 32)
        assert f"{name}: target layer '{module_name(model, hf_target_layers(model)[0])}'" in out
    # the similarity to a concept is not the first principal component
    assert np.abs(maps["dinov2_gradcam"] - maps["dinov2_eigencam"]).max() > 0.05
