"""cam.py end to end, in-process (main(argv)), and its one-line errors for bad input."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

from pytorch_cam.cli import DEFAULT_IMAGE, build_parser, default_target_layers, main
from pytorch_cam.methods import METHODS
from pytorch_cam.utils.image import load_image, show_cam_on_image

REPO = Path(__file__).resolve().parent.parent
# A small model input keeps these runs fast; outputs are still at the photo size.
ARCH = ["--arch", "resnet18", "--input-size", "96"]


def _one_error_line(capsys: pytest.CaptureFixture, *must_contain: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


def test_bundled_photo_is_a_real_photo() -> None:
    rgb = load_image(DEFAULT_IMAGE)
    assert rgb.shape == (300, 451, 3)
    assert rgb.std() > 0.1  # not a blank or synthetic placeholder


def test_method_choices_come_from_registry() -> None:
    action = next(a for a in build_parser()._actions if a.dest == "method")
    assert list(action.choices) == [*METHODS, "all"]


def test_end_to_end_random_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    assert main([*ARCH, "--weights", "none", "--method", "gradcam", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights" in out
    assert sum(1 for ln in out.splitlines() if ln.strip()[:2] in {"1.", "2.", "3.", "4.", "5."}) == 5
    photo = load_image(DEFAULT_IMAGE)
    overlay = cv2.imread(str(tmp_path / "chelsea_gradcam.png"))
    mask = np.load(tmp_path / "chelsea_gradcam.npy")
    assert overlay.shape == photo.shape
    assert mask.shape == photo.shape[:2] and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0 and mask.max() > 0.5
    # The PNG is exactly the overlay of the saved map on the photo (RGB converted to OpenCV's BGR).
    expected = cv2.cvtColor(show_cam_on_image(photo, mask, use_rgb=True), cv2.COLOR_RGB2BGR)
    np.testing.assert_array_equal(overlay, expected)
    for name in ("chelsea_gb.png", "chelsea_gradcam_cam_gb.png"):
        img = cv2.imread(str(tmp_path / name))
        assert img.shape == photo.shape and img.std() > 1
    for name in ("chelsea_gradcam.png", "chelsea_gradcam.npy", "chelsea_gb.png", "chelsea_gradcam_cam_gb.png"):
        assert str(tmp_path / name) in out


def test_scorecam_with_cskip_and_batch_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    argv = [*ARCH, "--weights", "none", "--method", "scorecam", "--cskip", "4", "--batch-size", "4"]
    assert main([*argv, "--output-dir", str(tmp_path)]) == 0
    mask = np.load(tmp_path / "chelsea_scorecam.npy")
    assert mask.shape == (300, 451) and 0 <= mask.min() and mask.max() <= 1


@pytest.mark.parametrize("arch", ["vit_b_16", "swin_t"])
def test_transformers_need_no_layer_or_reshape(arch: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    argv = ["--arch", arch, "--weights", "none", "--method", "gradcam", "--input-size", "224"]
    with caplog.at_level("INFO", logger="pytorch_cam"):
        assert main([*argv, "--output-dir", str(tmp_path)]) == 0
    mask = np.load(tmp_path / "chelsea_gradcam.npy")
    assert mask.shape == (300, 451) and 0 <= mask.min() and mask.max() <= 1
    assert "norm" in caplog.text  # the chosen layer (the last block's first norm) is logged


def test_weights_path_is_loaded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        model.fc.bias[281] = 1e4  # only a loaded state dict makes "tabby" the top class
    path = tmp_path / "r18.pt"
    torch.save(model.state_dict(), path)
    argv = [*ARCH, "--weights", str(path), "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "loaded weights from" in out
    assert "1. tabby (class 281): 1.000" in out
    assert (tmp_path / "out" / "chelsea_gradcam.npy").exists()


def test_weights_path_mismatch_and_garbage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    argv = ["--arch", "resnet34", "--input-size", "96", "--weights", str(path), "--output-dir", str(tmp_path)]
    assert main(argv) == 2
    _one_error_line(capsys, "does not fit --arch resnet34")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert main([*ARCH, "--weights", str(junk), "--output-dir", str(tmp_path)]) == 2
    _one_error_line(capsys, "could not read --weights")
    assert main([*ARCH, "--weights", str(tmp_path / "missing.pt")]) == 2
    _one_error_line(capsys, "is not a file", "--weights none")


def test_offline_without_cached_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Simulate no network (whether or not this machine has one) and an empty weights cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    code = main([*ARCH, "--output-dir", str(tmp_path / "out")])
    assert code == 2
    _one_error_line(capsys, "--weights PATH", "--weights none", "resnet18")
    assert not (tmp_path / "out").exists()
    ckpt = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert not ckpt.exists() or not any(ckpt.iterdir())  # no partial download left behind


def test_corrupted_weights_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    ckpt = tmp_path / "torch_home" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / url.rsplit("/", 1)[-1]).write_bytes(b"truncated download")
    assert main([*ARCH, "--output-dir", str(tmp_path / "out")]) == 2
    _one_error_line(capsys, "could not be read", "delete the file")


@pytest.mark.parametrize("flag", [["--use-cuda"], ["--device", "cuda"]])
def test_cuda_unavailable(flag: list, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*ARCH, "--weights", "none", *flag]) == 2
    _one_error_line(capsys, "CUDA is not available", flag[0])


def test_unreadable_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*ARCH, "--weights", "none", "--image-path", str(tmp_path / "nope.png")]) == 2
    _one_error_line(capsys, "nope.png", "--image-path")
    fake = tmp_path / "fake.png"
    fake.write_text("this is text")
    assert main([*ARCH, "--weights", "none", "--image-path", str(fake)]) == 2
    _one_error_line(capsys, "fake.png")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--method", "gradcam", "--cskip", "4"], "--cskip only applies to iscam, scorecam, sscam"),
        (["--method", "gradcam", "--batch-size", "4"], "--batch-size only applies to"),
        (["--method", "scorecam", "--cskip", "0"], "cskip must keep at least one channel"),
        (["--method", "nosuchcam"], "invalid choice: 'nosuchcam'"),
        (["--arch", "resnet19"], "did you mean resnet18"),
        (["--target-class", "1000"], "--target-class 1000 is outside the model's 1000 classes"),
    ],
)
def test_bad_arguments(argv: list, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ARCH if "--arch" not in argv else ["--input-size", "96"]
    assert main([*base, "--weights", "none", *argv, "--output-dir", str(tmp_path)]) == 2
    _one_error_line(capsys, needle)


@pytest.mark.parametrize(
    "arch",
    ["resnet18", "resnext50_32x4d", "vgg11", "alexnet", "densenet121", "mobilenet_v3_small", "efficientnet_b0"]
    + ["convnext_tiny", "regnet_y_400mf", "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_0", "googlenet"],
)
@pytest.mark.filterwarnings("ignore:The default weight initialization")
def test_default_target_layer_is_spatial(arch: str) -> None:
    # Built on the meta device (shapes only, no weight initialisation cost) where the constructor allows it.
    device = "cpu" if arch.startswith("regnet") else "meta"
    with torch.device(device):
        model = torchvision.models.get_model(arch, weights=None).eval()
    (layer,) = default_target_layers(model, arch)
    shapes = []
    handle = layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 96, 96, device=device))
    finally:
        handle.remove()
    assert len(shapes) >= 1 and len(shapes[-1]) == 4 and shapes[-1][1] > 3


def _readme_command(marker: str) -> str:
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index(f"<!-- {marker} -->")
    assert lines[start + 1] == "```bash", "the command must be the bash block right after the marker"
    return lines[start + 2]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [ln for ln in ci if ln.strip() and not ln.startswith("#") and ln.split()[0] not in {"set", "cd"}]
    assert commands == [_readme_command("test-command")]
    assert os.access(REPO / ".ci" / "run", os.X_OK)


def test_readme_run_command_uses_the_cli_offline() -> None:
    cmd = _readme_command("run-command")
    assert "cam.py --weights none" in cmd and "torch==2.14.1 torchvision==0.29.1" in cmd


def test_weights_errors_are_one_short_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(torchvision.models.resnet18(weights=None), whole)  # the model object, not its state dict
    assert main([*ARCH, "--weights", str(whole), "--output-dir", str(tmp_path)]) == 2
    line = _one_error_line(capsys, "holds a pickled object", "torch.save(model.state_dict(), PATH)")
    assert "\x1b" not in line and len(line) < 300
    not_a_dict = tmp_path / "bytes.pt"
    not_a_dict.write_bytes(bytes(range(256)) * 8)
    assert main([*ARCH, "--weights", str(not_a_dict), "--output-dir", str(tmp_path)]) == 2
    _one_error_line(capsys, "could not read --weights")
    other = tmp_path / "r50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), other)
    assert main([*ARCH, "--weights", str(other), "--output-dir", str(tmp_path)]) == 2
    line = _one_error_line(capsys, "does not fit --arch resnet18", "key(s) unexpected", "of another shape")
    assert len(line) < 400, len(line)


def test_output_dir_that_is_a_file_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    file = tmp_path / "taken"
    file.write_text("")
    # An unknown architecture would be reported later: the output check comes first.
    assert main(["--arch", "resnet19", "--output-dir", str(file)]) == 2
    _one_error_line(capsys, "is a file, not a folder")


def test_help_names_the_program_as_started(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["/usr/bin/pytorch-cam", "--help"])
    with pytest.raises(SystemExit):
        build_parser().parse_args()
    out = capsys.readouterr().out
    assert out.startswith("usage: pytorch-cam") and "auto" in out


def test_method_all_writes_every_map_and_a_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(
            [
                "--arch",
                "resnet18",
                "--weights",
                "none",
                "--input-size",
                "48",
                "--method",
                "all",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for name in METHODS:
        assert (tmp_path / f"chelsea_{name}.npy").is_file(), name
        assert f"  {name}" in out
    assert "scorecam (CSKIP-16)" in out
    grid = cv2.imread(str(tmp_path / "chelsea_all.png"))
    assert grid is not None and grid.shape[1] == 5 * 240 and grid.shape[0] >= (len(METHODS) // 5) * 28


def test_missing_image_prints_only_our_line_even_at_the_file_descriptor(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    # OpenCV's imread writes "[ WARN ... findDecoder ...]" to fd 2 itself, past sys.stderr.
    assert main([*ARCH, "--weights", "none", "--image-path", str(tmp_path / "nope.png")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --image-path") and "WARN" not in err


def test_an_all_zero_map_is_not_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # torchvision zero-initialises the ViT head: with random weights every score is the same, so the map is empty.
    with caplog.at_level("WARNING", logger="pytorch_cam"):
        assert main(["--arch", "vit_b_16", "--weights", "none", "--output-dir", str(tmp_path)]) == 0
    assert "returned an all-zero map" in caplog.text
    assert not np.load(tmp_path / "chelsea_gradcam.npy").any()


def test_precision_reaches_the_method_in_both_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    class Spy(METHODS["gradcam"]):  # type: ignore[misc, valid-type]
        def __init__(self, *args, precision: str = "fp32", **kwargs) -> None:
            seen.append(precision)
            super().__init__(*args, precision=precision, **kwargs)

    monkeypatch.setitem(METHODS, "gradcam", Spy)
    torch.manual_seed(0)
    assert main([*ARCH, "--weights", "none", "--precision", "bf16", "--output-dir", str(tmp_path / "a")]) == 0
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "photo.png"), cv2.imread(str(DEFAULT_IMAGE)))
    argv = ["--image-dir", str(folder), "--output-dir", str(tmp_path / "b"), "--input-size", "64", "--num-workers", "0"]
    assert main([*argv, "--arch", "resnet18", "--weights", "none", "--precision", "fp16"]) == 0
    assert seen == ["bf16", "fp16"]


def test_bf16_map_is_close_to_the_fp32_map(tmp_path: Path) -> None:
    masks = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        out = tmp_path / precision
        assert main([*ARCH, "--weights", "none", "--precision", precision, "--output-dir", str(out)]) == 0
        masks[precision] = np.load(out / "chelsea_gradcam.npy")
    assert np.corrcoef(masks["fp32"].ravel(), masks["bf16"].ravel())[0, 1] > 0.95


def test_help_documents_whole_folders(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--image-dir", "--num-workers", "--overlays", "--resume", "--shard-size", "--metrics", "--target"):
        assert flag in out, flag
    assert "fp32 is exact, bf16 ~2-3x faster on CPUs with bf16 support" in out
