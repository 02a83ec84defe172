"""Deep Feature Factorization: the torch NMF, DFF against pytorch-grad-cam 1.5.7, the image helpers.

NMF factors are not unique, so parity is measured on what is: the reconstruction error of ours
against scikit-learn's (what the peer calls) on the same matrix, and, where the factorisation is
well determined (few concepts), the concept maps matched one to one.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from pytorch_cam.feature_factorization import DeepFeatureFactorization, dff, run_dff_on_image
from pytorch_cam.utils.image import _gist_rainbow, create_labels_legend, load_image, show_factorization_on_image
from pytorch_cam.utils.nmf import nmf, relative_error

grad_cam_dff = pytest.importorskip("pytorch_grad_cam.feature_factorization.deep_feature_factorization")
grad_cam_image = pytest.importorskip("pytorch_grad_cam.utils.image")

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "usage_examples" / "images" / "chelsea.png"


def planted(m: int, n: int, r: int, seed: int = 0) -> torch.Tensor:
    """An exactly rank-r non-negative matrix W0 H0 with sparse factors (so the fit is identifiable)."""
    g = torch.Generator().manual_seed(seed)
    W0, H0 = torch.rand(m, r, generator=g), torch.rand(r, n, generator=g)
    return (W0 * (W0 > 0.5)) @ (H0 * (H0 > 0.5))


def layer_activations(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["a"].numpy()


def shifted_matrix(acts: np.ndarray):
    V = acts.transpose(1, 0, 2, 3).reshape(acts.shape[1], -1).astype(np.float64)
    offset = V.min(axis=1, keepdims=True)
    return V - offset, offset


def fit_error(acts: np.ndarray, concepts: np.ndarray, explanations: np.ndarray) -> float:
    """Relative error of a DFF result (concepts with the offset added back, raw maps) on its matrix."""
    V, offset = shifted_matrix(acts)
    H = explanations.transpose(1, 0, 2, 3).reshape(explanations.shape[1], -1)
    return float(np.linalg.norm(V - (concepts - offset) @ H) / np.linalg.norm(V))


def matched_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest correlation of the rows of a and b after the best one-to-one matching."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    a = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
    b = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12)
    corr = a @ b.T
    rows, cols = linear_sum_assignment(-corr)
    return float(corr[rows, cols].min())


def peer_dff(acts: np.ndarray, k: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning at max_iter
        return grad_cam_dff.dff(acts.copy(), n_components=k)


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)


# ----------------------------------------------------------------------------------------- NMF
@pytest.mark.parametrize("shape", [(60, 40, 4), (512, 49, 5), (200, 300, 8)])
def test_nmf_recovers_a_planted_low_rank_matrix(shape):
    V = planted(*shape)
    W, H = nmf(V, shape[2])
    assert W.shape == (shape[0], shape[2]) and H.shape == (shape[2], shape[1])
    assert bool((W >= 0).all()) and bool((H >= 0).all())
    assert float(relative_error(V, W, H)) < 1e-4
    W, H = nmf(V.double(), shape[2], tol=1e-8, max_iter=1000)
    assert W.dtype == torch.float64 and float(relative_error(V.double(), W, H)) < 1e-6


def test_nmf_batch_factorises_each_matrix():
    V = torch.stack([planted(40, 30, 3, seed) for seed in range(3)])
    W, H = nmf(V, 3)
    assert W.shape == (3, 40, 3) and H.shape == (3, 3, 30)
    assert float(relative_error(V, W, H).max()) < 1e-4
    # Same sweeps (tol=0): the batch gives each matrix what it gets alone.
    R = torch.rand(3, 40, 30, generator=torch.Generator().manual_seed(0))
    Wb, Hb = nmf(R, 3, tol=0, max_iter=30)
    for i in range(3):
        Wi, Hi = nmf(R[i], 3, tol=0, max_iter=30)
        alone, batched = float(relative_error(R[i], Wi, Hi)), float(relative_error(R[i], Wb[i], Hb[i]))
        assert alone == pytest.approx(batched, rel=1e-4)


def test_plain_hals_never_increases_the_error():
    V = torch.rand(50, 30, generator=torch.Generator().manual_seed(0))
    errors = [float(relative_error(V, *nmf(V, 4, tol=0, max_iter=i, extrapolate=False))) for i in range(1, 15)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(errors, errors[1:]))


def test_nmf_is_deterministic_and_leaves_the_global_rng_alone():
    V = torch.rand(64, 20, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    for init in ("random", "nndsvd", "nndsvda"):
        W1, H1 = nmf(V, 5, init=init)
        W2, H2 = nmf(V, 5, init=init)
        assert torch.equal(W1, W2) and torch.equal(H1, H2)
    assert torch.equal(state, torch.get_rng_state())


def test_nmf_edge_cases():
    W, H = nmf(torch.zeros(5, 4), 2)  # nothing to fit
    assert float(W.abs().sum() * H.abs().sum()) == 0.0
    V = torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    W, H = nmf(V, 5)  # more components than min(m, n)
    assert W.shape == (6, 5) and float(relative_error(V, W, H)) < 1e-3
    W, H = nmf(V.half(), 2)
    assert W.dtype == torch.float16
    W0, H0 = torch.rand(6, 2), torch.rand(2, 3)
    W, H = nmf(V, 2, init=(W0, H0))
    assert W.shape == (6, 2)


@pytest.mark.parametrize(
    "V, rank, match",
    [
        (torch.rand(4, 3) - 1, 2, "non-negative"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1, "NaN or Inf"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), 1, "NaN or Inf"),
        (torch.rand(4, 3), 0, "rank"),
        (torch.rand(2, 4, 3, 2), 2, r"\(B, m, n\)"),
        (torch.ones(4, 3, dtype=torch.long), 2, "floating point"),
    ],
)
def test_nmf_bad_input(V, rank, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nmf(V, rank)


def test_nmf_bad_init():
    with pytest.raises(ValueError, match="init must be one of"):
        nmf(torch.rand(4, 3), 2, init="svd")
    with pytest.raises(ValueError, match="shapes"):
        nmf(torch.rand(4, 3), 2, init=(torch.rand(4, 3), torch.rand(2, 3)))


# ------------------------------------------------------------------- parity with pytorch-grad-cam
def _layers(resnet18, vgg11):
    return [
        ("resnet18.layer4", resnet18, resnet18.layer4),
        ("resnet18.layer3", resnet18, resnet18.layer3),
        ("vgg11.features[-2]", vgg11, vgg11.features[-2]),
        ("vgg11.features[10]", vgg11, vgg11.features[10]),
    ]


def test_reconstruction_error_matches_scikit_learn(resnet18, vgg11, x64):
    """Ours on the very matrix the peer factorises: no worse than scikit-learn's by more than 2 %."""
    for name, model, layer in _layers(resnet18, vgg11):
        acts = layer_activations(model, layer, x64)
        for k in (2, 3, 5):
            ours = fit_error(acts, *dff(acts, k))
            peer = fit_error(acts, *peer_dff(acts, k))
            assert ours <= 1.02 * peer, (name, k, ours, peer)


def test_few_concepts_match_the_peer_concept_maps(resnet18, vgg11, x64):
    """At the last layers, 2-3 concepts are well separated: the same maps as the peer's, matched one
    to one. (Elsewhere the two solvers may settle in different local optima of about the same
    error, e.g. vgg11.features[10] with 2 concepts: r = 0.86 at an error ratio of 1.0007.)"""
    for name, model, layer in _layers(resnet18, vgg11)[::2]:
        acts = layer_activations(model, layer, x64)
        for k in (2, 3):
            _, ours = dff(acts, k)
            _, peer = peer_dff(acts, k)
            flat = [e.transpose(1, 0, 2, 3).reshape(k, -1) for e in (ours, peer)]
            assert matched_correlation(*flat) >= 0.99, (name, k)


def test_call_returns_what_the_peer_returns(resnet18, x64):
    ours_obj = DeepFeatureFactorization(resnet18, resnet18.layer4, computation_on_concepts=resnet18.fc)
    assert ours_obj.activations_and_grads.activations == []  # before a call: an empty record
    ours = ours_obj(x64, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer_dff_obj = grad_cam_dff.DeepFeatureFactorization(
            resnet18, resnet18.layer4, computation_on_concepts=resnet18.fc
        )
        try:
            peer = peer_dff_obj(x64, 4)
            peer_activations = peer_dff_obj.activations_and_grads.activations[0].clone()
        finally:
            peer_dff_obj.activations_and_grads.release()  # the peer leaves its hooks otherwise
    # dff.activations_and_grads: the factorised activations of the call, detached on the CPU, as the peer's.
    record = ours_obj.activations_and_grads
    assert len(record.activations) == 1 and record.gradients == []
    assert record.activations[0].device.type == "cpu" and not record.activations[0].requires_grad
    torch.testing.assert_close(record.activations[0], peer_activations, rtol=1e-5, atol=1e-5)
    concepts, explanations, scores = ours
    assert len(ours) == len(peer) == 3
    assert concepts.shape == peer[0].shape == (512, 4) and concepts.dtype == peer[0].dtype == np.float32
    assert explanations.shape == np.asarray(peer[1]).shape == (2, 4, 64, 64)
    assert explanations.dtype == np.float32 and explanations.min() >= 0 and explanations.max() <= 1
    # Each concept map is min-max scaled per image: it spans [0, 1] unless constant.
    flat = explanations.reshape(8, -1)
    assert np.allclose(flat.max(axis=1)[flat.max(axis=1) > 0], 1.0)
    assert scores.shape == peer[2].shape == (4, 1000) and scores.dtype == peer[2].dtype
    # The scores are the head on the concept embeddings.
    with torch.no_grad():
        expected = resnet18.fc(torch.from_numpy(concepts.T.copy())).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert len(DeepFeatureFactorization(resnet18, resnet18.layer4)(x64, 3)) == 2


def test_explanations_are_the_scaled_upsampled_factor_rows(resnet18, x64):
    """The class's maps are dff()'s raw maps, min-max scaled per image and concept, resized to the input."""
    acts = layer_activations(resnet18, resnet18.layer3, x64)
    concepts, raw = dff(acts, 3)
    got_concepts, got = DeepFeatureFactorization(resnet18, resnet18.layer3)(x64, 3)
    np.testing.assert_array_equal(got_concepts, concepts)
    lo = raw.min(axis=(2, 3), keepdims=True)
    scaled = (raw - lo) / (raw.max(axis=(2, 3), keepdims=True) - lo)
    resized = torch.nn.functional.interpolate(torch.from_numpy(scaled), size=(64, 64), mode="bilinear")
    np.testing.assert_allclose(got, resized.numpy(), atol=1e-5)


def test_shift_by_channel_minimum(resnet18, x64):
    """Each channel is shifted by its minimum before the NMF and the shift is added back to the
    concepts, as the peer does: negative activations (here a constant -5) are factorised as well."""
    acts = layer_activations(resnet18, resnet18.layer3, x64)
    _, offset = shifted_matrix(acts)
    concepts, maps = dff(acts, 3)
    concepts2, maps2 = dff(acts - 5.0, 3)
    assert fit_error(acts - 5.0, concepts2, maps2) == pytest.approx(fit_error(acts, concepts, maps), rel=1e-3)
    assert (concepts - offset).min() >= 0 and (concepts2 - (offset - 5.0)).min() >= -1e-4
    assert concepts2.min() < 0 and maps2.min() >= 0
    # NaN counts as 0, as in the peer's dff.
    nan_acts = acts.copy()
    nan_acts[0, 0, 0, 0] = np.nan
    zero_acts = acts.copy()
    zero_acts[0, 0, 0, 0] = 0.0
    np.testing.assert_array_equal(dff(nan_acts, 2)[1], dff(zero_acts, 2)[1])


def test_dff_of_a_tensor_stays_a_tensor(resnet18, x64):
    acts = torch.from_numpy(layer_activations(resnet18, resnet18.layer4, x64))
    concepts, maps = dff(acts, 2)
    assert torch.is_tensor(concepts) and concepts.shape == (512, 2) and maps.shape == (2, 2, 2, 2)


def test_model_is_left_untouched(tiny_cnn):
    model = tiny_cnn()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    factorization = DeepFeatureFactorization(model, model.features, computation_on_concepts=model.fc)
    factorization(torch.randn(2, 3, 16, 16), 3)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError):  # the context manager never swallows errors
        with DeepFeatureFactorization(model, model.features) as f:
            f(torch.randn(3, 16, 16))


def test_default_layer_is_inferred(resnet18, x64):
    factorization = DeepFeatureFactorization(resnet18, None)
    concepts, maps = factorization(x64, 2)
    assert factorization.inferred.target_layers == [resnet18.layer4[-1]] and concepts.shape == (512, 2)


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_n_components(resnet18, x64, k):
    with pytest.raises(ValueError, match="n_components"):
        DeepFeatureFactorization(resnet18, resnet18.layer4)(x64, k)
    with pytest.raises(ValueError, match="n_components"):
        dff(np.ones((1, 4, 2, 2), np.float32), k)


def test_bad_input_shapes(resnet18, tiny_cnn):
    factorization = DeepFeatureFactorization(resnet18, resnet18.layer4)
    with pytest.raises(ValueError, match="unsqueeze"):
        factorization(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        factorization(torch.randn(1, 3, 8, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        dff(np.ones((4, 2, 2), np.float32))
    with pytest.raises(TypeError, match="nn.Module"):
        DeepFeatureFactorization(resnet18, [resnet18.layer4])
    with pytest.raises(TypeError, match="callable"):
        DeepFeatureFactorization(resnet18, resnet18.layer4, computation_on_concepts="fc")
    model = tiny_cnn()
    with torch.no_grad():
        model.conv1.bias.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="NaN/Inf activations"):
        DeepFeatureFactorization(model, model.features)(torch.randn(1, 3, 16, 16), 2)


# ----------------------------------------------------------------------------- image helpers
def test_default_colours_are_matplotlibs_gist_rainbow():
    matplotlib = pytest.importorskip("matplotlib")
    cmap = matplotlib.colormaps["gist_rainbow"]
    for n in (1, 2, 5, 16, 49, 100):
        theirs = np.array([cmap(i) for i in np.arange(0, 1, 1.0 / n)])[:n]
        np.testing.assert_array_equal(np.array(_gist_rainbow(n)), theirs)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("image_weight", [0.3, 0.5])
def test_show_factorization_matches_the_peer(dtype, image_weight):
    rng = np.random.default_rng(0)
    maps = rng.random((5, 24, 32)).astype(np.float32)
    img = rng.random((24, 32, 3)).astype(dtype)
    kept = maps.copy()
    ours = show_factorization_on_image(img, maps, image_weight=image_weight)
    # The peer's default colours need matplotlib's removed cm.get_cmap: pass the same ones.
    peer = grad_cam_image.show_factorization_on_image(
        img, maps.copy(), colors=_gist_rainbow(5), image_weight=image_weight
    )
    assert ours.shape == peer.shape == (24, 32, 3) and ours.dtype == peer.dtype == np.uint8
    np.testing.assert_array_equal(ours, peer)
    np.testing.assert_array_equal(maps, kept)  # the peer zeroes the non-winning pixels in place; we do not


def test_show_factorization_with_legend_matches_the_peer_shape():
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(1)
    maps = rng.random((3, 48, 40)).astype(np.float32)
    img = rng.random((48, 40, 3))
    labels = ["cat:0.90\ndog:0.05", "grass:0.50", "sky:0.20"]
    ours = show_factorization_on_image(img, maps, concept_labels=labels)
    peer = grad_cam_image.show_factorization_on_image(img, maps.copy(), colors=_gist_rainbow(3), concept_labels=labels)
    assert ours.shape == peer.shape == (48, 80, 3) and ours.dtype == peer.dtype == np.uint8
    np.testing.assert_array_equal(ours[:, :40], peer[:, :40])  # the legend panel is drawn differently
    assert ours[:, 40:].std() > 0  # something was drawn


def test_show_factorization_resizes_maps_and_takes_colours():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, :, :2] = 1.0  # concept 0 on the left, concept 1 (weaker) on the right
    maps[1, :, 2:] = 0.5
    out = show_factorization_on_image(np.zeros((8, 8, 3)), maps, colors=[(1, 0, 0), (0, 0, 1)], image_weight=0.0)
    assert out.shape == (8, 8, 3)
    assert tuple(out[4, 0]) == (255, 0, 0) and out[4, 7, 2] in (126, 127, 128) and out[4, 7, :2].max() == 0


def test_show_factorization_bad_input():
    maps = np.random.rand(2, 8, 8).astype(np.float32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        show_factorization_on_image(np.zeros((8, 8, 3), np.uint8), maps)
    with pytest.raises(ValueError, match=r"\(k, h, w\)"):
        show_factorization_on_image(np.zeros((8, 8, 3)), maps[0])
    with pytest.raises(ValueError, match="colors"):
        show_factorization_on_image(np.zeros((8, 8, 3)), maps, colors=[(1, 0, 0)])
    with pytest.raises(ValueError, match="concept_labels"):
        show_factorization_on_image(np.zeros((8, 8, 3)), maps, concept_labels=["a"])
    with pytest.raises(ValueError, match="image_weight"):
        show_factorization_on_image(np.zeros((8, 8, 3)), maps, image_weight=2)


def test_legend_without_matplotlib_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        show_factorization_on_image(np.zeros((8, 8, 3)), np.random.rand(2, 8, 8), concept_labels=["a", "b"])
    show_factorization_on_image(np.zeros((8, 8, 3)), np.random.rand(2, 8, 8))  # no legend: no matplotlib


def test_create_labels_legend_matches_the_peer():
    rng = np.random.default_rng(0)
    scores = rng.random((4, 10))
    names = {i: f"name{i}, synonym{i}, third, fourth" for i in range(10)}
    for top_k in (1, 2, 3, 20):
        ours = create_labels_legend(scores, names, top_k=top_k)
        assert ours == grad_cam_image.create_labels_legend(scores, names, top_k=top_k)
    assert ours[0].count("\n") == 9  # top_k beyond the categories lists them all
    assert create_labels_legend(torch.from_numpy(scores), [names[i] for i in range(10)]) == create_labels_legend(
        scores, names
    )
    assert create_labels_legend(np.array([[0.1, 0.7, 0.2]]), ["a", "b", "c"], top_k=2) == ["b:0.70\nc:0.20"]


def test_create_labels_legend_bad_input():
    with pytest.raises(ValueError, match="no name for category"):
        create_labels_legend(np.array([[0.1, 0.9]]), {0: "a"})
    with pytest.raises(ValueError, match="top_k"):
        create_labels_legend(np.array([[0.1, 0.9]]), ["a", "b"], top_k=0)
    with pytest.raises(ValueError, match=r"\(concepts, categories\)"):
        create_labels_legend(np.array([0.1, 0.9]), ["a", "b"])


# ---------------------------------------------------------------------- run_dff_on_image, example
def test_run_dff_on_image_on_the_photo(tiny_cnn):
    pytest.importorskip("matplotlib")
    from PIL import Image

    model = tiny_cnn()
    img = Image.fromarray(np.uint8(np.round(cv2.resize(load_image(str(PHOTO)), (32, 32)) * 255)))
    x = torch.from_numpy(np.asarray(img, np.float32).transpose(2, 0, 1) / 255)
    labels = ["cat", "dog", "car", "tree", "sky"]
    out = run_dff_on_image(model, model.features, model.fc, img, x, n_components=3, top_k=2, labels=labels)
    assert out.shape == (32, 96, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :32], np.asarray(img))
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="img_tensor"):
        run_dff_on_image(model, model.features, model.fc, img, x[None].repeat(2, 1, 1, 1))


def test_usage_example_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    script = ROOT / "usage_examples" / "dff_example.py"
    args = ["--arch", "resnet18", "--image-size", "64", "--n-components", "3", "--output-dir", str(tmp_path)]
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    picture = cv2.imread(str(tmp_path / "dff.png"))
    assert picture is not None and picture.shape == (64, 192, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_nmf_and_dff_on_the_gpu(x64):
    import torchvision

    V = planted(200, 100, 4).cuda()
    W, H = nmf(V, 4)
    assert W.is_cuda and float(relative_error(V, W, H)) < 1e-4
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().cuda()
    concepts, maps, scores = DeepFeatureFactorization(model, model.layer4, computation_on_concepts=model.fc)(
        x64.cuda(), 3
    )
    assert concepts.shape == (512, 3) and maps.shape == (2, 3, 64, 64) and scores.shape == (3, 1000)
