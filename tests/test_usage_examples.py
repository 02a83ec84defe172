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
