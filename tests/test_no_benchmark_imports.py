"""The tests exercise the package, never the benchmark scripts: no test file imports ``benchmarks``.

What the benchmarks and the tests share (the scenes, the faithfulness evaluation) lives in
``pytorch_cam``; the tests only read benchmarks/models/*.pt as data, by path.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List

TESTS = Path(__file__).resolve().parent

#: calls whose first argument is a module name to import
IMPORTING_CALLS = {"import_module", "__import__", "importorskip"}


def imported_modules(source: str, filename: str = "<test>") -> Iterator[str]:
    """Every module a source file imports: import statements (at any depth) and calls such as
    ``importlib.import_module("x")`` or ``pytest.importorskip("x")`` with a literal name."""
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if name in IMPORTING_CALLS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield first.value


def benchmark_imports(source: str, filename: str = "<test>") -> List[str]:
    return [m for m in imported_modules(source, filename) if m.split(".")[0] == "benchmarks"]


def test_no_test_file_imports_benchmarks():
    files = sorted(TESTS.glob("*.py"))
    assert Path(__file__) in files and (TESTS / "conftest.py") in files
    offenders = {f.name: found for f in files if (found := benchmark_imports(f.read_text(encoding="utf-8"), str(f)))}
    assert offenders == {}, (
        f"{offenders}: tests must not import the benchmark scripts; move what they share into pytorch_cam "
        "(e.g. pytorch_cam.utils.scenes, pytorch_cam.metrics.faithfulness)"
    )


def test_the_scan_finds_every_form_of_import():
    source = """
import benchmarks
import os, benchmarks.speed as speed
from benchmarks.scenes import generate_scenes
from benchmarks import faithfulness


def later():
    import importlib

    import pytest

    from benchmarks.cskip_fidelity import main

    importlib.import_module("benchmarks.faithfulness")
    pytest.importorskip("benchmarks.scenes")
    __import__("benchmarks")


from pytorch_cam.utils.scenes import generate_scenes  # not a benchmark
path = "benchmarks/models/scenes_cnn.pt"  # data, not an import
"""
    assert benchmark_imports(source) == [
        "benchmarks",
        "benchmarks.speed",
        "benchmarks.scenes",
        "benchmarks",
        "benchmarks.cskip_fidelity",
        "benchmarks.faithfulness",
        "benchmarks.scenes",
        "benchmarks",
    ]
