"""Explaining from several threads: other threads' inference is never disturbed, shared models stay intact."""

from __future__ import annotations

import copy
import gc
import linecache
import threading

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pytorch_cam import AblationCAM, GradCAM, ScoreCAM


def _resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_ablationcam_tracing_does_not_break_inference_in_another_thread():
    """torch.fx patches nn.Module.__call__ process-wide while it traces; other threads must not notice."""
    explained, other = _resnet(), _resnet(1)
    with torch.no_grad():
        expected = other(X)
    stop = threading.Event()
    failures: list = []
    runs = [0]

    def infer() -> None:
        while not stop.is_set():
            try:
                with torch.no_grad():
                    out = other(X)
                if not torch.allclose(out, expected, atol=1e-5):
                    failures.append("wrong output")
            except Exception as e:  # noqa: BLE001 - any failure of the plain forward is the bug
                failures.append(f"{type(e).__name__}: {e}")
            runs[0] += 1

    thread = threading.Thread(target=infer)
    thread.start()
    try:
        for _ in range(12):  # every new AblationCAM traces the model again
            AblationCAM(explained, [explained.layer4[-1]], batch_size=64, progress=False)(X, [1, 2])
    finally:
        stop.set()
        thread.join()
    assert runs[0] > 0
    assert not failures, f"{len(failures)} of {runs[0]} forwards failed, e.g. {failures[0]}"


def test_two_ablationcams_on_two_model_copies_in_two_threads():
    models = [_resnet(), _resnet()]
    sequential = AblationCAM(models[0], [models[0].layer4[-1]], batch_size=64, progress=False)(X, [1, 2])
    results: dict = {}
    errors: list = []

    def work(i: int) -> None:
        try:
            for r in range(6):
                m = models[i]
                results[(i, r)] = AblationCAM(m, [m.layer4[-1]], batch_size=64, progress=False)(X, [1, 2])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for maps in results.values():
        np.testing.assert_allclose(maps, sequential, atol=1e-5)


@pytest.mark.parametrize("cls", [GradCAM, ScoreCAM])
def test_threads_sharing_one_model_get_sequential_maps_and_leave_it_untouched(cls):
    model = _resnet()
    model.train()  # BatchNorm would update its running stats if a thread's forward ran in train mode
    model.layer1.eval()  # mixed flags must come back exactly
    before = copy.deepcopy(model.state_dict())
    kwargs = {"batch_size": 64, "progress": False} if cls is ScoreCAM else {}
    inputs = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    layer = model.layer3[-1]
    expected = [cls(model, [layer], **kwargs)(x, [1, 2]) for x in inputs]
    got: dict = {}
    errors: list = []

    def work(t: int) -> None:
        try:
            cam = cls(model, [layer], **kwargs)
            for r in range(3 if cls is GradCAM else 1):
                for i, x in enumerate(inputs):
                    got[(t, r, i)] = cam(x, [1, 2])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (_, _, i), maps in got.items():
        np.testing.assert_allclose(maps, expected[i], atol=1e-5)
    assert model.training and not model.layer1.training and model.layer2.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not any(m._forward_hooks for m in model.modules())


def test_ablationcam_objects_do_not_leak_traced_source():
    model = _resnet()
    AblationCAM(model, [model.layer4[-1]], progress=False)(X, [1, 2])
    gc.collect()
    before = len(linecache.cache)
    for _ in range(10):
        AblationCAM(model, [model.layer4[-1]], batch_size=64, progress=False)(X, [1, 2])
    gc.collect()
    assert len(linecache.cache) <= before
