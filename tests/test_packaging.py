"""What a non-editable `pip install .` ships: the CLI's default photo comes with the package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pytorch_cam import cli

ROOT = Path(__file__).resolve().parent.parent


def test_default_photo_lives_in_the_package():
    assert cli.DEFAULT_IMAGE.is_file() and not cli.DEFAULT_IMAGE.is_symlink()
    assert cli.DEFAULT_IMAGE.parent == Path(cli.__file__).resolve().parent / "data"


def test_the_wheel_contains_the_default_photo(tmp_path):
    pytest.importorskip("setuptools")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("pytorch_cam-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pytorch_cam/data/chelsea.png" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "usage_examples/")) for n in names)
