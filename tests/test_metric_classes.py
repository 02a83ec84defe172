"""pytorch-grad-cam's metric classes (road, cam_mult_image, perturbation_confidence, arcc) in pytorch_cam:
the same names and signatures, the same numbers as pytorch-grad-cam 1.5.7 (installed, test-only) on a
tiny seeded CNN, batched forwards, and clear errors."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import torch
from torch import nn

import pytorch_cam.metrics.arcc as arcc
import pytorch_cam.metrics.cam_mult_image as cam_mult_image
import pytorch_cam.metrics.perturbation_confidence as perturbation_confidence
import pytorch_cam.metrics.road as road
from pytorch_cam import GradCAM
from pytorch_cam.metrics.road import otsu_thresholds, percentile_thresholds
from pytorch_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

peer_metrics = pytest.importorskip("pytorch_grad_cam.metrics.road").__name__.rsplit(".", 1)[0]
peer_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
# pytorch-grad-cam turns torch tensors into numpy with np.float32(tensor), which NumPy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")
MODULES = ("road", "cam_mult_image", "perturbation_confidence", "arcc")
CLASSES = [1, 2, 3, 4]


def peer(module: str):
    return importlib.import_module(f"{peer_metrics}.{module}")


def ours(module: str):
    return importlib.import_module(f"pytorch_cam.metrics.{module}")


@pytest.fixture
def net(tiny_cnn) -> nn.Module:
    return tiny_cnn()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def cams(tiny_cnn, x) -> np.ndarray:
    model = tiny_cnn()
    return GradCAM(model, [model.features])(x, [ClassifierOutputTarget(c) for c in CLASSES])


def targets(softmax: bool = False, library: str = "ours") -> list:
    mod = peer_targets if library == "peer" else importlib.import_module("pytorch_cam.utils.model_targets")
    cls = mod.ClassifierOutputSoftmaxTarget if softmax else mod.ClassifierOutputTarget
    return [cls(c) for c in CLASSES]


@pytest.fixture
def noiseless_peer(monkeypatch):
    """pytorch-grad-cam's ROAD classes build ``NoisyLinearImputer()``: make its default noise 0 so
    that the numbers are deterministic and comparable."""
    imputer = peer("road").NoisyLinearImputer
    monkeypatch.setattr(imputer.__init__, "__defaults__", (0.0, peer("road").neighbors_weights))


# ---------------------------------------------------------------- names and signatures
def _public(module) -> dict:
    skip = {"Callable", "List", "np", "torch", "cv2", "lil_matrix", "csc_matrix", "spsolve", "BaseCAM"}
    return {
        k: v for k, v in vars(module).items() if not k.startswith("_") and k not in skip and not inspect.ismodule(v)
    }


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_exists_with_a_compatible_signature(module):
    theirs, mine = _public(peer(module)), vars(ours(module))
    assert sorted(set(theirs) - set(mine)) == []
    for name, obj in theirs.items():
        if not callable(obj):
            continue
        for attr in ("__init__", "__call__") if inspect.isclass(obj) else (None,):
            if attr is not None and attr not in vars(obj):
                continue
            want = inspect.signature(getattr(obj, attr) if attr else obj).parameters
            got = list(inspect.signature(getattr(mine[name], attr) if attr else mine[name]).parameters.values())
            where = f"{module}.{name}{'.' + attr if attr else ''}"
            assert [p.name for p in got[: len(want)]] == list(want), where
            for p, q in zip(want.values(), got):
                same = p.default == q.default or p.default is inspect.Parameter.empty
                same = same or (isinstance(p.default, list) and sorted(p.default) == sorted(q.default))  # a table
                assert same, (where, p.name)
            extra = got[len(want) :]
            assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in extra), (where, extra)


def test_module_neighbour_table_is_the_papers():
    assert sorted(road.neighbors_weights) == sorted(peer("road").neighbors_weights)


# ---------------------------------------------------------------- parity: confidence change
@pytest.mark.parametrize("name", ["CamMultImageConfidenceChange", "DropInConfidence", "IncreaseInConfidence"])
@pytest.mark.parametrize("softmax", [False, True])
def test_cam_mult_image_matches_the_peer(net, x, cams, name, softmax):
    want = getattr(peer("cam_mult_image"), name)()(x, cams, targets(softmax, "peer"), net)
    got = getattr(cam_mult_image, name)()(x, cams, targets(softmax), net)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (4,)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_confidence_change_options_match_the_peer(net, x, cams):
    metric, theirs = (
        cam_mult_image.CamMultImageConfidenceChange(),
        peer("cam_mult_image").CamMultImageConfidenceChange(),
    )
    got, images = metric(x, cams, targets(), net, return_visualization=True, return_diff=False)
    want, their_images = theirs(x, cams, targets(library="peer"), net, return_visualization=True, return_diff=False)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert torch.allclose(images, their_images) and torch.equal(images, x * torch.from_numpy(cams)[:, None])
    # the explanation map is one forward of the images and their maps, not one per image
    drop, images = cam_mult_image.DropInConfidence()(x, cams, targets(), net, return_visualization=True)
    assert drop.shape == (4,) and images.shape == x.shape and bool((drop >= 0).all())


# ---------------------------------------------------------------- parity: ROAD
@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("percentile", [10, 35, 50, 80, 90])
def test_single_cut_road_matches_the_peers_sparse_solve(net, x, cams, order, percentile):
    remove = "RemoveMostRelevantFirst" if order == "morf" else "RemoveLeastRelevantFirst"
    theirs = peer("perturbation_confidence").PerturbationConfidenceMetric(
        getattr(peer("perturbation_confidence"), remove)(percentile, peer("road").NoisyLinearImputer(noise=0))
    )
    mine = perturbation_confidence.PerturbationConfidenceMetric(
        getattr(perturbation_confidence, remove)(percentile, road.NoisyLinearImputer(noise=0, tol=1e-7))
    )
    want, their_images = theirs(x, cams, targets(library="peer"), net, return_visualization=True)
    got, images = mine(x, cams, targets(), net, return_visualization=True)
    assert got.dtype == np.float32 and got.shape == (4,)
    # the same pixels removed (a different cut would move some by ~0.5) and the same solution
    assert float((images - their_images).abs().max()) < 5e-5
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("name", ["ROADMostRelevantFirstAverage", "ROADLeastRelevantFirstAverage", "ROADCombined"])
def test_road_averages_match_the_peer(net, x, cams, noiseless_peer, name):
    want = getattr(peer("road"), name)(percentiles=[20, 50, 80])(x, cams, targets(library="peer"), net)
    got = getattr(road, name)(percentiles=[20, 50, 80], noise=0)(x, cams, targets(), net)
    assert got.dtype == np.float32 and got.shape == (4,)
    # default tolerance of the CG solve: imputed pixels within ~3e-4 of the direct solve
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_single_cut_classes_with_noise_are_seeded_and_near_the_noiseless_value(net, x, cams):
    args = (x, cams, targets(), net)
    a = road.ROADMostRelevantFirst(70)(*args)
    assert np.array_equal(a, road.ROADMostRelevantFirst(70)(*args))  # seed=0: reproducible
    assert not np.array_equal(a, road.ROADMostRelevantFirst(70, seed=1)(*args))
    torch.manual_seed(5)
    b = road.ROADMostRelevantFirst(70, seed=None)(*args)  # torch's global generator, as the peer
    torch.manual_seed(5)
    assert np.array_equal(b, road.ROADMostRelevantFirst(70, seed=None)(*args))
    clean = road.ROADMostRelevantFirst(70, noise=0)(*args)
    assert np.abs(a - clean).max() < 0.05 and np.abs(a - clean).max() > 0


def test_road_runs_batched(net, x, cams):
    calls = []
    handle = net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        road.ROADCombined()(x, cams, targets(), net)  # 9 percentiles x 2 orders x 4 images
    finally:
        handle.remove()
    # per order: the 36 (image, percentile) rows in one forward, plus one of the clean images
    assert calls == [36, 4, 36, 4]


def test_otsu_matches_opencv_and_auto_removes_the_pixels_above_it(net, x, cams):
    cv2 = pytest.importorskip("cv2")
    g = torch.Generator().manual_seed(0)
    levels = torch.cat([torch.randint(0, 256, (3, 400), generator=g), (torch.rand(3, 400, generator=g) ** 3 * 255)])
    levels = levels.to(torch.uint8)
    want = [cv2.threshold(row.numpy(), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0] for row in levels]
    assert otsu_thresholds(levels).tolist() == want
    metric = road.ROADMostRelevantFirst("auto", noise=0)
    _, images = metric(x, cams, targets(), net, return_visualization=True)
    levels = torch.from_numpy(np.uint8(cams * 255))
    above = (levels > otsu_thresholds(levels.reshape(4, -1))[:, None, None]).numpy()
    changed = (images != x).any(dim=1).numpy()
    assert np.array_equal(changed & ~above, np.zeros_like(above))  # only pixels above the threshold move
    assert changed.sum() > 0.9 * above.sum()  # nearly all of them (a few imputed values equal the original)


def test_percentile_thresholds_match_numpy_exactly():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 7, 9, generator=g)
    maps[1] = (maps[1] * 4).round() / 4  # ties
    maps[2] = torch.nn.functional.interpolate(maps[2:3, None, :3, :3], size=(7, 9), mode="bilinear")[0, 0]
    pct = [0.5, 10, 20, 33.3, 50, 66.7, 80, 90, 99.5]
    got = percentile_thresholds(maps.reshape(3, -1), pct)
    want = np.stack([[np.percentile(m.numpy(), p) for p in pct] for m in maps])
    assert got.dtype == torch.float32 and np.array_equal(got.numpy(), want)


def test_imputer_object_matches_the_peer_and_honours_its_weighting(x):
    img = x[0]
    mask = (torch.rand(24, 24, generator=torch.Generator().manual_seed(3)) > 0.4).float()
    want = peer("road").NoisyLinearImputer(noise=0)(img, mask)
    got = road.NoisyLinearImputer(noise=0, tol=1e-7)(img, mask)
    assert got.shape == img.shape and float((got - want).abs().max()) < 1e-5
    # the system is homogeneous in the weights: scaling them all (the general stencil) changes nothing
    doubled = [(offset, 2 * w) for offset, w in road.neighbors_weights]
    again = road.NoisyLinearImputer(noise=0, weighting=doubled, tol=1e-7)(img, mask)
    assert float((again - got).abs().max()) < 1e-5
    four = [((0, 1), 0.25), ((0, -1), 0.25), ((1, 0), 0.25), ((-1, 0), 0.25)]
    assert float((road.NoisyLinearImputer(noise=0, weighting=four)(img, mask) - got).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="symmetric"):
        road.NoisyLinearImputer(weighting=[((0, 1), 0.5), ((0, -1), 0.25)])


def test_the_sparse_system_helpers_match_the_peer_and_our_solve(x):
    mask = (torch.rand(10, 12, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    img = x[0, :, :10, :12]
    theirs = peer("road").NoisyLinearImputer
    idx = np.arange(120)
    for offset in ((1, 1), (-1, 0), (0, -1)):
        want, got = (
            theirs.add_offset_to_indices(idx, offset, (10, 12)),
            road.NoisyLinearImputer.add_offset_to_indices(idx, offset, (10, 12)),
        )
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1][want[0]], got[1][got[0]])
    a_want, b_want = theirs.setup_sparse_system(mask.numpy(), img.numpy(), theirs().weighting)
    a, b = road.NoisyLinearImputer.setup_sparse_system(mask, img)
    np.testing.assert_allclose(a.to_dense().numpy(), a_want.toarray(), atol=1e-12)
    np.testing.assert_allclose(b.numpy(), b_want, atol=1e-6)
    solved = torch.linalg.solve(a.to_dense(), b)  # (N, C): the imputed pixels, raster order
    ours = road.NoisyLinearImputer(noise=0, tol=1e-7)(img, mask)
    assert torch.allclose(ours[:, mask == 0].T.double(), solved, atol=1e-5)


def test_a_users_perturbation_imputer_and_averaged_metric_work_as_in_the_peer(net, x, cams):
    def keep_strong(image, cam):
        return image * (cam > 0.5)

    theirs = peer("perturbation_confidence")
    want = theirs.PerturbationConfidenceMetric(keep_strong)(x, cams, targets(library="peer"), net)
    got = perturbation_confidence.PerturbationConfidenceMetric(keep_strong)(x, cams, targets(), net)
    np.testing.assert_allclose(got, want, atol=1e-6)

    def zero_fill(image, mask):  # pytorch-grad-cam's imputer protocol: mask 0 = fill
        return image * mask

    want = theirs.PerturbationConfidenceMetric(theirs.RemoveMostRelevantFirst(60, zero_fill))(
        x, cams, targets(library="peer"), net
    )
    mine = perturbation_confidence.PerturbationConfidenceMetric(
        perturbation_confidence.RemoveMostRelevantFirst(60, zero_fill)
    )
    np.testing.assert_allclose(mine(x, cams, targets(), net), want, atol=1e-6)

    class Keep(perturbation_confidence.PerturbationConfidenceMetric):  # any percentile-built metric
        def __init__(self, percentile):
            super().__init__(lambda image, cam: image * (cam < percentile / 100))

    class TheirKeep(theirs.PerturbationConfidenceMetric):
        def __init__(self, percentile):
            super().__init__(lambda image, cam: image * (cam < percentile / 100))

    want = theirs.AveragerAcrossThresholds(TheirKeep, [30, 60])(x, cams, targets(library="peer"), net)
    got = perturbation_confidence.AveragerAcrossThresholds(Keep, [30, 60])(x, cams, targets(), net)
    np.testing.assert_allclose(got, want, atol=1e-6)


# ---------------------------------------------------------------- parity: ARCC
def test_arcc_and_its_parts_match_the_peer(tiny_cnn, x, cams, noiseless_peer):
    from pytorch_grad_cam import GradCAM as PeerGradCAM

    their_net, my_net = tiny_cnn(), tiny_cnn()
    theirs = peer("arcc")
    np.testing.assert_allclose(arcc.Complexity()(cams), theirs.Complexity()(cams), atol=1e-6)
    other = np.ascontiguousarray(cams[::-1])
    np.testing.assert_allclose(
        arcc.batch_pearson_coherency(cams, other), theirs.batch_pearson_coherency(cams, other), atol=1e-5
    )
    assert torch.is_tensor(arcc.batch_pearson_coherency(torch.from_numpy(cams), torch.from_numpy(other)))
    their_cam = PeerGradCAM(their_net, [their_net.features])
    my_cam = GradCAM(my_net, [my_net.features])
    want = theirs.ARCC(their_cam)(x, cams, targets(True, "peer"), their_net)
    got = arcc.ARCC(my_cam, noise=0)(x, cams, targets(True), my_net)
    assert got.dtype == np.float32 and got.shape == (4,)
    np.testing.assert_allclose(got, want, atol=1e-4)
    coherency = arcc.Coherency()(x, cams, targets(True), my_net, my_cam)
    assert bool(((coherency >= 0) & (coherency <= 1)).all())


# ---------------------------------------------------------------- precision, model state, errors
def test_reduced_precision_classes_return_float32_near_fp32(net, x, cams):
    args = (x, cams, targets(True), net)
    fp32 = road.ROADCombined(percentiles=[30, 70])(*args)
    bf16 = road.ROADCombined(percentiles=[30, 70], precision="bf16")(*args)
    assert bf16.dtype == np.float32 and np.abs(bf16 - fp32).max() < 0.01
    drop = cam_mult_image.DropInConfidence(precision="bf16")(*args)
    assert drop.dtype == np.float32 and np.abs(drop - cam_mult_image.DropInConfidence()(*args)).max() < 0.01


def test_the_users_model_is_left_as_it_was(net, x, cams):
    net.train()
    net.conv1.weight.requires_grad_(False)
    hooks = (len(net._forward_hooks), len(net._forward_pre_hooks))
    road.ROADCombined(percentiles=[50], precision="bf16", memory_format="channels_last")(x, cams, targets(), net)
    cam_mult_image.IncreaseInConfidence(precision="bf16")(x, cams, targets(), net)
    assert all(m.training for m in net.modules())
    assert not net.conv1.weight.requires_grad and net.features.weight.requires_grad
    assert all(p.dtype == torch.float32 and p.grad is None and p.is_contiguous() for p in net.parameters())
    assert (len(net._forward_hooks), len(net._forward_pre_hooks)) == hooks


def test_targets_default_to_the_top_class_logit(net, x, cams):
    with torch.no_grad():
        top = net(x).argmax(1).tolist()
    metric = cam_mult_image.CamMultImageConfidenceChange()
    assert np.array_equal(metric(x, cams, None, net), metric(x, cams, [ClassifierOutputTarget(c) for c in top], net))


def test_bad_inputs_are_named(net, x, cams):
    metric = road.ROADMostRelevantFirst()
    with pytest.raises(ValueError, match=r"maps must have shape \(B, H, W\) with B=4"):
        metric(x, cams[:2], targets(), net)
    with pytest.raises(ValueError, match="got 3 targets for 4 images"):
        metric(x, cams, targets()[:3], net)
    with pytest.raises(TypeError, match="targets must be callables"):
        metric(x, cams, ["cat"] * 4, net)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        metric(x, cams, net, targets())
    with pytest.raises(TypeError, match="divide it by 255"):
        metric(x, np.uint8(cams * 255), targets(), net)
    with pytest.raises(ValueError, match=r"images must be a float tensor of shape \(B, C, H, W\)"):
        metric(x[0], cams, targets(), net)
    with pytest.raises(ValueError, match="strictly between 0 and 100"):
        road.ROADLeastRelevantFirst(100)
    with pytest.raises(ValueError, match="precision must be 'fp32'"):
        road.ROADCombined(precision="int8")
    with pytest.raises(ValueError, match="memory_format must be one of"):
        cam_mult_image.DropInConfidence(memory_format="nchw")
    with pytest.raises(ValueError, match="percentiles is empty"):
        road.ROADMostRelevantFirstAverage(percentiles=[])(x, cams, targets(), net)
    with pytest.raises(ValueError, match="must return the perturbed image"):
        perturbation_confidence.PerturbationConfidenceMetric(lambda image, cam: cam)(x, cams, targets(), net)
    with pytest.raises(ValueError, match=r"mask must have the image's spatial shape"):
        road.NoisyLinearImputer()(x[0], torch.ones(5, 5))
    with pytest.raises(TypeError, match="base_method must be a CAM object"):
        arcc.Coherency()(x, cams, targets(), net, None)
    with pytest.raises(ValueError, match="A and B must be batches of maps of one shape"):
        arcc.batch_pearson_coherency(cams, cams[:2])
    assert ClassifierOutputSoftmaxTarget  # imported for the softmax parity above
