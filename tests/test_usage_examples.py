"""The usage examples run offline (random weights) and write their overlay PNG."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
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
