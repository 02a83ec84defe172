"""Compiled models and models whose traced tail depends on the batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from pytorch_cam import AblationCAM, EigenCAM, GradCAM, ScoreCAM

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.mark.parametrize("cls", [GradCAM, EigenCAM, AblationCAM, ScoreCAM])
def test_torch_compiled_model_gives_the_eager_map(model, cls):
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        compiled(X)  # a plain call first: the compiled code now exists and would skip later hooks
    kwargs = {"progress": False, "batch_size": 64} if cls in (AblationCAM, ScoreCAM) else {}
    if cls is ScoreCAM:
        kwargs["cskip"] = 8
    eager = cls(model, [model.layer4[-1]], **kwargs)(X, [1, 2])
    got = cls(compiled, [compiled.layer4[-1]], **kwargs)(X, [1, 2])
    np.testing.assert_allclose(got, eager, atol=1e-5)


def test_module_compiled_in_place_gives_the_eager_map():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    eager = GradCAM(model, [model.layer4[-1]])(X, [1, 2])
    model.compile(backend="eager")
    with torch.no_grad():
        model(X)
    np.testing.assert_allclose(GradCAM(model, [model.layer4[-1]])(X, [1, 2]), eager, atol=1e-5)


def test_ablation_hook_path_refuses_a_forward_that_skips_its_hook(tiny_cnn):
    net = tiny_cnn()
    net.unused = torch.nn.Identity()  # never called by forward, as compiled code never calls the hooks
    cam = AblationCAM(net, [net.features], progress=False)
    with pytest.raises(RuntimeError, match="ran without calling the layer's hooks"):
        cam.run_with_layer_output(net.unused, X, torch.zeros(2, 16, 32, 32))


def test_ablationcam_on_timm_swin_with_a_batch_larger_than_one():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=2, num_classes=5, depths=(1, 1, 1, 1)
    ).eval()
    layer = swin.layers[-1].blocks[-1].norm1
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    # A few channels suffice (the hook path runs the whole Swin per ablated channel); each image keeps its own top ones.
    kwargs = {"ratio_channels_to_ablate": 0.05, "progress": False}
    batch = AblationCAM(swin, [layer], batch_size=4, **kwargs)(x, [1, 2, 3])
    for i, t in enumerate([1, 2, 3]):
        single = AblationCAM(swin, [layer], **kwargs)(x[i : i + 1], [t])
        np.testing.assert_allclose(batch[i], single[0], atol=1e-4)
