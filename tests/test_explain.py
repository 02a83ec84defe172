"""pytorch_cam.explain: whole folders through cam.py --image-dir, one process or two (torchrun, gloo),
killed and resumed, and load_results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset

from pytorch_cam import GradCAM
from pytorch_cam.cli import main
from pytorch_cam.explain import (
    KILL_AFTER_SHARDS_ENV,
    ExplainError,
    LazyResults,
    explain_dataset,
    list_images,
    load_results,
)
from pytorch_cam.utils.image import IMAGENET_MEAN, IMAGENET_STD, show_cam_on_image

REPO = Path(__file__).resolve().parent.parent
SIZE = 64  # model input: resnet18's layer4 is 2x2, enough for maps that vary
# 61 images in shards of 8 (the last holds 5), batches of 4: every boundary case of the plan
RUN = ["--arch", "resnet18", "--weights", "none", "--input-size", str(SIZE), "--shard-size", "8", "--batch-size", "4"]
CLASSES = ("cat", "dog", "fox")
BROKEN = "dog/broken.jpg"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 small photos per class folder (PNG and JPEG, several sizes), one truncated JPEG, one text file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir()
        for i in range(20):
            h, w = 40 + i, 72 - i
            low = rng.random((4, 4, 3)).astype(np.float32)
            img = np.uint8(255 * cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1))
            cv2.imwrite(str(root / c / f"{i:02d}.{'png' if i % 2 else 'jpg'}"), img)
    whole = (root / "cat" / "00.jpg").read_bytes()
    (root / BROKEN).write_bytes(whole[: len(whole) // 3])  # a truncated JPEG: decodes no further than its header
    (root / "notes.txt").write_text("not an image")
    return root


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop(KILL_AFTER_SHARDS_ENV, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run (in this process) that the other runs are compared with."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert main(["--image-dir", str(image_dir), "--output-dir", str(out), "--num-workers", "0", *RUN]) == 0
    return out


def _assert_same_results(a: Path, b: Path) -> None:
    ra, rb = load_results(a), load_results(b)
    assert list(ra) == list(rb)
    for key in ra:
        x, y = ra[key], rb[key]
        assert (x["status"], x["target"], x["error"], x["size"]) == (y["status"], y["target"], y["error"], y["size"])
        if x["status"] == "ok":
            assert np.abs(x["map"] - y["map"]).max() <= 1e-5, key
            assert abs(x["score"] - y["score"]) <= 1e-5, key


def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # what the CLI does for --weights none
    return torchvision.models.resnet18(weights=None).eval()


def _input(path: Path) -> torch.Tensor:
    rgb = np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255
    x = (rgb - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def test_records_hold_each_images_map_class_and_score(reference: Path, image_dir: Path) -> None:
    results = load_results(reference)
    keys = [f"{c}/{i:02d}.{'png' if i % 2 else 'jpg'}" for c in CLASSES for i in range(20)] + [BROKEN]
    assert list(results) == sorted(keys)  # every image once, keyed by its path; notes.txt is no image
    bad = results[BROKEN]
    assert bad["status"] == "error" and bad["map"] is None and bad["target"] == -1 and np.isnan(bad["score"])
    assert "truncated" in bad["error"].lower() or "broken" in bad["error"].lower(), bad["error"]
    model = _model()
    for key in ("cat/00.jpg", "dog/07.png", "fox/19.png"):
        rec = results[key]
        assert rec["status"] == "ok" and rec["error"] == "" and rec["size"] == (40 + int(key[4:6]), 72 - int(key[4:6]))
        m = rec["map"]
        assert m.dtype == np.float32 and m.shape == (SIZE, SIZE) and m.min() >= 0 and m.max() == 1.0
        x = _input(image_dir / key)
        with torch.no_grad():
            logits = model(x)[0]
        assert rec["target"] == int(logits.argmax())  # top1: the argmax, its logit the score
        assert rec["score"] == pytest.approx(float(logits.max()), abs=1e-4)
        with GradCAM(model, [model.layer4[-1]]) as cam:
            direct = cam(x)[0]
        # 8-bit storage: rounding to the nearest of 256 levels
        assert np.abs(m - direct).max() <= 1 / 510 + 1e-4


def test_storage_is_a_few_uint8_shards_and_a_manifest(reference: Path) -> None:
    files = sorted(p.relative_to(reference).as_posix() for p in reference.rglob("*") if p.is_file())
    assert files == ["manifest.json", "run.json", *[f"shards/shard-{j:05d}.npz" for j in range(8)], "summary.json"]
    with np.load(reference / "shards" / "shard-00007.npz") as z:
        assert z["maps"].dtype == np.uint8 and z["maps"].shape == (5, SIZE, SIZE)  # 61 = 7 * 8 + 5
    manifest = json.loads((reference / "manifest.json").read_text())
    assert (manifest["images"], manifest["ok"], manifest["errors"]) == (61, 60, 1)
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["bytes_per_map"] == SIZE * SIZE and summary["first_errors"][0][0] == BROKEN


def test_two_processes_under_torchrun_give_the_same_results(reference: Path, image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(REPO / "cam.py"),
        "--image-dir",
        str(image_dir),
        "--output-dir",
        str(out),
        "--num-workers",
        "1",
        *RUN,
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_results(reference, out)
    # rank 0 alone talks: each line once
    assert proc.stdout.count("explaining 61 images") == 1 and proc.stdout.count("RANDOM weights") == 1
    assert "2 processes" in proc.stdout
    run = json.loads((out / "run.json").read_text())
    assert run == json.loads((reference / "run.json").read_text())  # the process count is not an option


def test_a_killed_run_resumes_to_the_uninterrupted_result(reference: Path, image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--image-dir", str(image_dir), "--output-dir", str(out), "--num-workers", "1", *RUN]
    env = _env()
    env[KILL_AFTER_SHARDS_ENV] = "3"  # the test hook: SIGKILL right after the third shard file
    proc = subprocess.run([sys.executable, str(REPO / "cam.py"), *argv], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    # (shards are written by a small thread pool: one more may have landed as the third did)
    shards = sorted(p.name for p in (out / "shards").glob("shard-*.npz"))
    assert 3 <= len(shards) <= 4 and not (out / "manifest.json").exists(), shards
    # A kill in the middle of a write leaves a temp file; it is never read and is cleaned up.
    (out / "shards" / ".shard-00003.npz.tmp-999-1").write_bytes(b"PK\x03\x04 half a zip")
    kept = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-*.npz")}
    with pytest.raises(ExplainError, match="unfinished run"):
        load_results(out)
    assert len(load_results(out, partial=True)) == 8 * len(shards)
    assert main(argv) == 2  # without --resume: a clear error, nothing touched
    assert main([*argv, "--resume"]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished shards were not redone
    assert not list((out / "shards").glob(".*"))  # the temp files are gone
    _assert_same_results(reference, out)


def _one_error_line(capsys: pytest.CaptureFixture, *must_contain: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


def _snapshot(folder: Path) -> Dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_an_output_folder_with_another_run_is_never_overwritten(
    reference: Path, image_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    before = _snapshot(reference)
    argv = ["--image-dir", str(image_dir), "--output-dir", str(reference), "--num-workers", "0", *RUN]
    assert main([*argv, "--method", "eigencam"]) == 2
    _one_error_line(capsys, "holds a different run", "method: 'GradCAM' -> 'EigenCAM'", "nothing was overwritten")
    assert main([*argv, "--method", "eigencam", "--resume"]) == 2
    _one_error_line(capsys, "--resume: the options differ", "'GradCAM' -> 'EigenCAM'")
    assert main([*argv[:-2], "--batch-size", "8", "--resume"]) == 2
    _one_error_line(capsys, "--resume: the options differ", "batch_size: 4 -> 8")
    assert main(argv) == 2
    _one_error_line(capsys, "already holds this finished run")
    assert _snapshot(reference) == before
    assert main([*argv, "--resume"]) == 0  # the same options: nothing left to do
    assert "nothing left to do" in capsys.readouterr().out
    assert _snapshot(reference) == before


def test_bad_folders_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    assert main(["--image-dir", str(empty), "--output-dir", str(tmp_path / "o"), *RUN]) == 2
    _one_error_line(capsys, "no images in")
    assert not (tmp_path / "o").exists()
    assert main(["--image-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o"), *RUN]) == 2
    _one_error_line(capsys, "does not exist")
    loose = tmp_path / "loose"
    loose.mkdir()
    cv2.imwrite(str(loose / "a.png"), np.zeros((8, 8, 3), np.uint8))
    assert main(["--image-dir", str(loose), "--output-dir", str(tmp_path / "o"), "--target", "label", *RUN]) == 2
    _one_error_line(capsys, "--target label needs the ImageFolder layout", "'a.png'")
    assert main(["--image-dir", str(loose), "--output-dir", str(tmp_path / "o"), "--target-class", "1000", *RUN]) == 2
    _one_error_line(capsys, "outside the model's 1000 classes")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--resume"], "--resume only applies to a folder of images"),
        (["--overlays"], "--overlays only applies"),
        (["--target", "label"], "--target only applies"),
        (["--image-dir", "x", "--method", "all"], "pick one --method"),
        (["--image-dir", "x", "--target", "label", "--target-class", "3"], "pass one of them"),
        (["--image-dir", "x", "--image-path", "y.png"], "not allowed with argument"),
        (["--image-dir", "x", "--metrics", "deletion"], "--metrics takes"),
    ],
)
def test_dataset_flag_errors(argv: List[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    _one_error_line(capsys, message)


def test_label_target_explains_each_folders_class(image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--image-dir", str(image_dir), "--output-dir", str(out), "--num-workers", "0", "--target", "label"]
    assert main([*argv, *RUN]) == 0
    results = load_results(out)
    for key, rec in results.items():
        assert rec["label"] == CLASSES.index(key.split("/")[0])  # sorted folder names: cat 0, dog 1, fox 2
        if rec["status"] == "ok":
            assert rec["target"] == rec["label"]
    assert json.loads((out / "manifest.json").read_text())["classes"] == list(CLASSES)
    # the score is the logit of the folder's class
    model = _model()
    with torch.no_grad():
        logits = model(_input(image_dir / "fox/03.png"))[0]
    assert results["fox/03.png"]["score"] == pytest.approx(float(logits[2]), abs=1e-4)


def test_class_folders_named_by_numbers_are_class_indices(image_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "numbered"
    for name, src in (("281", "cat/00.jpg"), ("7", "dog/01.png")):  # sorted as text, "281" < "7"
        (root / name).mkdir(parents=True)
        (root / name / Path(src).name).write_bytes((image_dir / src).read_bytes())
    out = tmp_path / "out"
    assert main(["--image-dir", str(root), "--output-dir", str(out), "--target", "label", *RUN]) == 0
    results = load_results(out)
    assert results["281/00.jpg"]["target"] == 281 and results["7/01.png"]["target"] == 7


def test_overlays_and_metrics(image_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "few"
    for key in ("cat/01.png", "dog/02.jpg", "fox/03.png"):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes((image_dir / key).read_bytes())
    out = tmp_path / "out"
    argv = ["--image-dir", str(root), "--output-dir", str(out), "--overlays", "--metrics", "confidence", *RUN]
    assert main(argv) == 0
    results = load_results(out)
    for key, rec in results.items():
        overlay = cv2.imread(str(out / "overlays" / f"{key}.png"))
        assert overlay is not None and overlay.shape[:2] == rec["size"]  # at the photo's own size
        # Regression: the photo's red and blue were swapped (an RGB photo blended as if BGR). The overlay
        # file is what show_cam_on_image gives for the photo in RGB, written in OpenCV's BGR order.
        photo = cv2.cvtColor(cv2.imread(str(root / key)), cv2.COLOR_BGR2RGB)
        m = cv2.resize(rec["map"], photo.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        expected = show_cam_on_image(np.float32(photo) / 255, np.clip(m, 0, 1), use_rgb=True)
        assert np.abs(cv2.cvtColor(overlay, cv2.COLOR_BGR2RGB).astype(int) - expected.astype(int)).max() <= 2
        assert np.isfinite(rec["confidence_change"])
    summary = json.loads((out / "summary.json").read_text())
    mean = np.mean([r["confidence_change"] for r in results.values()])
    assert summary["metrics"]["confidence_change"] == pytest.approx(mean, rel=1e-5)


class _Tensors(Dataset):
    """A user's Dataset: normalised tensors and labels; item 3 raises."""

    def __init__(self, n: int = 10) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, SIZE, SIZE, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if i == 3:
            raise OSError("disk read failed")
        return self.x[i], i % 5


def test_explain_dataset_on_a_dataset_and_load_results_round_trip(tmp_path: Path) -> None:
    model = _model()
    data = _Tensors()
    with GradCAM(model, [model.layer4[-1]]) as cam:
        summary = explain_dataset(
            cam, data, tmp_path / "out", targets="label", batch_size=3, shard_size=4, num_workers=0
        )
        labelled = cam(data.x, targets=[i % 5 for i in range(10)])
    assert (summary["images"], summary["ok"], summary["errors"], summary["shards"]) == (10, 9, 1, 3)
    results = load_results(tmp_path / "out")
    assert list(results) == [str(i) for i in range(10)]
    assert results["3"]["status"] == "error" and "disk read failed" in results["3"]["error"]
    for i in (0, 4, 9):
        rec = results[str(i)]
        assert rec["target"] == rec["label"] == i % 5
        assert np.abs(rec["map"] - labelled[i]).max() <= 1 / 510 + 1e-4
    lazy = load_results(tmp_path / "out", lazy=True)
    assert isinstance(lazy, LazyResults) and list(lazy) == list(results) and len(lazy) == 10
    for key, rec in lazy.items():
        for field in ("target", "status", "error", "size", "label"):
            assert rec[field] == results[key][field]
        assert (rec["map"] is None and results[key]["map"] is None) or np.array_equal(rec["map"], results[key]["map"])


class _Bytes(Dataset):
    """A Dataset of uint8 images (not normalised for the model)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(3, 8, 8, dtype=torch.uint8)


def test_python_api_errors(tmp_path: Path) -> None:
    model = _model()
    with GradCAM(model, [model.layer4[-1]]) as cam:
        with pytest.raises(ExplainError, match="one per image"):
            explain_dataset(cam, _Tensors(), tmp_path / "a", targets=[1, 2])
        with pytest.raises(ExplainError, match="unknown metric"):
            explain_dataset(cam, _Tensors(), tmp_path / "a", metrics=["deletion"])
        with pytest.raises(ExplainError, match="map-style torch Dataset"):
            explain_dataset(cam, [np.zeros((3, 8, 8))] * 2, tmp_path / "a")  # type: ignore[arg-type]
        with pytest.raises(ExplainError, match="must give a float"):
            explain_dataset(cam, _Bytes(), tmp_path / "a")
        with pytest.raises(ExplainError, match="no explain_dataset results"):
            load_results(tmp_path)
    assert not (tmp_path / "a").exists()


def test_listing_skips_hidden_files_and_the_output_folder(tmp_path: Path) -> None:
    for rel in ("a/1.png", "a/.2.png", ".cache/3.png", "out/overlays/4.png", "B.JPG"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert list_images(tmp_path, exclude=tmp_path / "out") == ["B.JPG", "a/1.png"]


def test_a_torchvision_image_folder_is_keyed_by_its_files(image_dir: Path, tmp_path: Path) -> None:
    from torchvision import transforms

    tf = transforms.Compose(
        [transforms.Resize((SIZE, SIZE)), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    folder = torchvision.datasets.ImageFolder(str(image_dir), transform=tf)
    model = _model()
    with GradCAM(model, [model.layer4[-1]]) as cam:
        summary = explain_dataset(
            cam, folder, tmp_path / "out", targets="label", batch_size=8, num_workers=0, overlays=True
        )
    assert (summary["ok"], summary["errors"]) == (60, 1)
    results = load_results(tmp_path / "out")
    assert list(results) == list_images(image_dir)  # its files' paths relative to its root
    assert results[BROKEN]["status"] == "error"
    assert all(r["target"] == CLASSES.index(k.split("/")[0]) for k, r in results.items() if r["status"] == "ok")
    assert (tmp_path / "out" / "overlays" / "fox" / "03.png.png").is_file()


def test_torchrun_with_more_processes_than_gpus_names_the_cause(monkeypatch):
    """LOCAL_RANK beyond the GPU count: our message, not torch's "invalid device ordinal"."""
    from pytorch_cam import explain as ex

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(ex.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ex.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(ex.dist, "is_initialized", lambda: False)
    with pytest.raises(ex.ExplainError, match="LOCAL_RANK=1.*1 GPU"):
        ex.init_distributed("cuda")
