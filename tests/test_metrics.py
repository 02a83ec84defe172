"""pytorch_cam.metrics: closed forms, the ROAD imputation against a sparse direct solve, and the
ordering perfect map > random map > inverted map on every metric with the trained scenes CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_cam.metrics import (
    auc,
    average_drop,
    boxes_to_masks,
    confidence_change,
    deletion_auc,
    deletion_curve,
    energy_pointing_game,
    increase_in_confidence,
    insertion_auc,
    insertion_curve,
    masked_scores,
    noisy_linear_impute,
    pointing_game,
    road_curve,
    road_score,
)
from pytorch_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_cam.utils.scenes import generate_scenes


class EvidenceModel(nn.Module):
    """Hand-built 2-class model whose class-0 score depends only on the object's pixels.

    Objects are pure blue (0, 0, 1); background pixels have every channel in [0, 0.5], so the
    per-pixel evidence 2 * relu(b - r - g - 0.5) is 1 on the object and 0 elsewhere. The logit is
    50 * mean(evidence) minus a small clutter penalty 3 * mean(r^2 + g^2): removing the object
    always hurts, removing the background never does, and a removed object leaves no evidence
    behind (no shape leakage, unlike a trained CNN that recognises the hole's silhouette).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = 2 * torch.relu(x[:, 2] - x[:, 0] - x[:, 1] - 0.5)
        clutter = (x[:, 0] ** 2 + x[:, 1] ** 2).mean(dim=(1, 2))
        s = 50 * evidence.mean(dim=(1, 2)) - 3 * clutter
        return torch.stack([s, torch.zeros_like(s)], dim=1)


@pytest.fixture(scope="module")
def evidence_model() -> nn.Module:
    return EvidenceModel()


@pytest.fixture(scope="module")
def scenes():
    images, _, masks = generate_scenes(16, seed=321, size=32)
    blue = torch.tensor([0.0, 0.0, 1.0])[None, :, None, None]
    images = torch.where(masks[:, None], blue, 0.5 * images)
    return images, torch.zeros(16, dtype=torch.long), masks


@pytest.fixture(scope="module")
def three_maps(scenes):
    _, _, masks = scenes
    perfect = masks.float()
    random = torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    return {"perfect": perfect, "random": random, "inverted": 1 - perfect}


def test_trained_cnn_is_accepted_by_every_metric_entry_point(scenes_cnn):
    cnn = scenes_cnn
    images, labels, masks = generate_scenes(2, seed=1)
    assert average_drop(cnn, images, masks.float(), labels).shape == (2,)
    assert deletion_auc(cnn, images, masks.float(), labels, steps=2).shape == (2,)
    assert road_curve(cnn, images, masks.float(), labels, percentiles=(50,)).shape == (2, 1)


# ---------------------------------------------------------------- localisation, closed forms
def test_pointing_game_closed_form():
    maps = torch.zeros(3, 8, 8)
    maps[0, 2, 3] = 1  # inside
    maps[1, 6, 6] = 1  # 2 px outside
    maps[2, 5, 4] = 1  # 1 px outside
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, 1:5, 1:5] = True
    assert pointing_game(maps, masks).tolist() == [1.0, 0.0, 0.0]
    assert pointing_game(maps, masks, tolerance=1).tolist() == [1.0, 0.0, 1.0]
    assert pointing_game(maps, masks, tolerance=2).tolist() == [1.0, 1.0, 1.0]
    # boxes (x0, y0, x1, y1) end-exclusive give the same masks
    boxes = torch.tensor([[1, 1, 5, 5]] * 3)
    assert torch.equal(boxes_to_masks(boxes, (8, 8)), masks)
    assert pointing_game(maps, boxes).tolist() == [1.0, 0.0, 0.0]


def test_pointing_game_flat_map_does_not_hit_everywhere():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 4:, 4:] = True
    assert pointing_game(torch.zeros(1, 8, 8), masks).item() == 0.0


def test_energy_pointing_game_closed_form():
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[:, :2, :2] = True
    out = energy_pointing_game(maps, masks)
    assert out.tolist() == pytest.approx([0.75, 0.0])  # all-zero map -> 0


def test_localisation_errors():
    with pytest.raises(ValueError, match="shaped like the maps"):
        pointing_game(torch.zeros(2, 8, 8), torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="tolerance must be a non-negative int"):
        pointing_game(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.bool), tolerance=-1)
    with pytest.raises(ValueError, match="non-negative maps"):
        energy_pointing_game(-torch.ones(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"boxes must have shape \(B, 4\)"):
        boxes_to_masks(torch.zeros(2, 3), (4, 4))


# ---------------------------------------------------------------- model-based, closed forms
def test_auc_closed_form():
    curve = torch.stack([torch.linspace(1, 0, 5), torch.ones(5)])
    assert auc(curve).tolist() == pytest.approx([0.5, 1.0])


def test_confidence_metrics_closed_forms(evidence_model, scenes):
    images, labels, _ = scenes
    x = images[:6]
    ones = torch.ones(6, 32, 32)
    assert torch.equal(average_drop(evidence_model, x, ones, labels[:6]), torch.zeros(6))
    assert torch.equal(increase_in_confidence(evidence_model, x, ones, labels[:6]), torch.zeros(6))
    half = 0.5 * ones.numpy()  # numpy maps are accepted too
    y, o = masked_scores(evidence_model, x, half, labels[:6])
    with torch.no_grad():
        probs = evidence_model(torch.cat([x, 0.5 * x])).softmax(1)
    assert torch.allclose(y, probs[:6].gather(1, labels[:6, None])[:, 0], atol=1e-6)
    assert torch.allclose(o, probs[6:].gather(1, labels[:6, None])[:, 0], atol=1e-6)
    assert torch.allclose(average_drop(evidence_model, x, half, labels[:6]), (y - o).clamp(min=0) / y, atol=1e-6)
    assert torch.allclose(confidence_change(evidence_model, x, half, labels[:6]), o - y, atol=1e-6)
    # targets: None = top class (= class 0 here), ClassifierOutputTarget, ints and a tensor all agree
    as_targets = [ClassifierOutputTarget(int(c)) for c in labels[:6]]
    for t in (None, as_targets, labels[:6].tolist()):
        assert torch.equal(masked_scores(evidence_model, x, half, t)[1], o)


def test_deletion_and_insertion_curve_end_points(evidence_model, scenes):
    images, labels, masks = scenes
    x, lab, m = images[:4], labels[:4], masks[:4].float()
    with torch.no_grad():
        p_image = evidence_model(x).softmax(1).gather(1, lab[:, None])[:, 0]
        p_black = evidence_model(torch.zeros_like(x)).softmax(1).gather(1, lab[:, None])[:, 0]
    dele = deletion_curve(evidence_model, x, m, lab, steps=4, batch_size=7)
    assert dele.shape == (4, 5)
    assert torch.allclose(dele[:, 0], p_image, atol=1e-5) and torch.allclose(dele[:, -1], p_black, atol=1e-5)
    ins = insertion_curve(evidence_model, x, m, lab, steps=4, batch_size=7)
    assert torch.allclose(ins[:, -1], p_image, atol=1e-5)


def test_metric_errors(evidence_model, scenes):
    images, labels, masks = scenes
    with pytest.raises(ValueError, match=r"maps must have shape \(B, H, W\) with B=2"):
        average_drop(evidence_model, images[:2], masks[:3].float())
    with pytest.raises(ValueError, match="got 3 targets for 2 images"):
        average_drop(evidence_model, images[:2], masks[:2].float(), [0, 1, 2])
    with pytest.raises(ValueError, match="score must be one of"):
        deletion_auc(evidence_model, images[:2], masks[:2].float(), score="prob")
    with pytest.raises(ValueError, match="order must be 'morf'"):
        road_curve(evidence_model, images[:2], masks[:2].float(), order="most")
    with pytest.raises(ValueError, match="strictly between 0 and 100"):
        road_curve(evidence_model, images[:2], masks[:2].float(), percentiles=[0, 50])
    with pytest.raises(ValueError, match="NaN or Inf"):
        average_drop(evidence_model, images[:1], torch.full((1, 32, 32), float("nan")))


# ---------------------------------------------------------------- ROAD imputation
def _impute_reference(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Sparse direct solve of the neighbour-average system, written independently of the torch CG."""
    sp = pytest.importorskip("scipy.sparse")
    spl = pytest.importorskip("scipy.sparse.linalg")
    h, w = removed.shape
    weights = {(dy, dx): (1 / 12 if dy and dx else 1 / 6) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx}
    unknown = np.argwhere(removed)
    index = -np.ones((h, w), dtype=int)
    index[removed] = np.arange(len(unknown))
    a = sp.lil_matrix((len(unknown), len(unknown)))
    rhs = np.zeros((len(unknown), image.shape[0]))
    for row, (i, j) in enumerate(unknown):
        for (dy, dx), wt in weights.items():
            y, x = i + dy, j + dx
            if 0 <= y < h and 0 <= x < w:
                a[row, row] += wt
                if removed[y, x]:
                    a[row, index[y, x]] -= wt
                else:
                    rhs[row] += wt * image[:, y, x]
    out = image.copy()
    out[:, removed] = spl.spsolve(a.tocsc(), rhs).T
    return out


def test_noisy_linear_imputation_matches_sparse_solve():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 20, 20, generator=g)
    removed = torch.rand(2, 20, 20, generator=g) < 0.6
    removed[1] = False
    removed[1, 3:17, 2:15] = True  # one big hole: the slowest case for CG
    out = noisy_linear_impute(images, removed, noise=0.0)
    for b in range(2):
        ref = _impute_reference(images[b].double().numpy(), removed[b].numpy())
        assert np.abs(out[b].numpy() - ref).max() < 1e-4
    kept = ~removed[:, None].expand_as(images)
    assert torch.equal(out[kept], images[kept])
    # the noise goes on the removed pixels only, with the requested spread, reproducibly
    noisy = noisy_linear_impute(images, removed, noise=0.1, generator=torch.Generator().manual_seed(1))
    again = noisy_linear_impute(images, removed, noise=0.1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again) and torch.equal(noisy[kept], images[kept])
    diff = (noisy - out)[~kept]
    assert 0.08 < float(diff.std()) < 0.12


# ---------------------------------------------------------------- perfect > random > inverted
def _means(fn, model, scenes, maps):
    images, labels, _ = scenes
    return {k: float(fn(model, images, m, labels).float().mean()) for k, m in maps.items()}


def test_localisation_ordering(scenes, three_maps):
    masks = scenes[2]
    for metric in (pointing_game, energy_pointing_game):
        r = {k: float(metric(m, masks).mean()) for k, m in three_maps.items()}
        assert r["perfect"] == 1.0 and r["inverted"] == 0.0
        assert 0.0 < r["random"] < 0.5


def test_deletion_insertion_ordering(evidence_model, scenes, three_maps):
    d = _means(lambda *a: deletion_auc(*a, steps=8), evidence_model, scenes, three_maps)
    assert d["perfect"] < d["random"] < d["inverted"]
    i = _means(lambda *a: insertion_auc(*a, steps=8), evidence_model, scenes, three_maps)
    assert i["perfect"] > i["random"] > i["inverted"]


def test_confidence_ordering(evidence_model, scenes, three_maps):
    drop = _means(average_drop, evidence_model, scenes, three_maps)
    assert drop["perfect"] < drop["random"] < drop["inverted"]
    change = _means(confidence_change, evidence_model, scenes, three_maps)
    assert change["perfect"] > change["random"] > change["inverted"]
    inc = _means(increase_in_confidence, evidence_model, scenes, three_maps)
    assert inc["perfect"] > inc["random"] >= inc["inverted"]


def test_road_ordering(evidence_model, scenes, three_maps):
    images, labels, _ = scenes
    res = {k: road_score(evidence_model, images, m, labels, percentiles=(20, 50, 80)) for k, m in three_maps.items()}
    combined, morf, lerf = ({k: float(v[i].mean()) for k, v in res.items()} for i in range(3))
    assert morf["perfect"] < morf["random"] < morf["inverted"]
    assert lerf["perfect"] > lerf["random"] > lerf["inverted"]
    assert combined["perfect"] > combined["random"] > combined["inverted"]


# ---------------------------------------------------------------- reduced precision
@pytest.fixture(scope="module")
def scored_scenes(scenes_cnn):
    images, labels, masks = generate_scenes(8, seed=3)
    from pytorch_cam import GradCAM

    maps = torch.from_numpy(GradCAM(scenes_cnn, [scenes_cnn.target_layer])(images, labels.tolist()))
    return images, labels, maps


PRECISION_METRICS = {
    "masked_scores": lambda m, x, s, y, **k: torch.stack(masked_scores(m, x, s, y, **k)),
    "deletion_curve": lambda m, x, s, y, **k: deletion_curve(m, x, s, y, steps=8, **k),
    "insertion_curve": lambda m, x, s, y, **k: insertion_curve(m, x, s, y, steps=8, **k),
    "road_curve": lambda m, x, s, y, **k: road_curve(m, x, s, y, percentiles=(20, 50, 80), **k),
}


@pytest.mark.parametrize("name", sorted(PRECISION_METRICS))
def test_bf16_metrics_are_float32_and_close_to_fp32_on_the_trained_cnn(scenes_cnn, scored_scenes, name):
    """bf16 keeps 8 significant bits (relative rounding 2^-9 per value); through the scenes CNN's five
    convolutions the class probabilities move by at most ~0.01 (measured: 0.009 on insertion, <= 0.006
    elsewhere), so every probability is asserted within 0.02 and the mean within 0.003."""
    images, labels, maps = scored_scenes
    fn = PRECISION_METRICS[name]
    fp32 = fn(scenes_cnn, images, maps, labels)
    for memory_format in ("auto", "contiguous"):
        bf16 = fn(scenes_cnn, images, maps, labels, precision="bf16", memory_format=memory_format)
        assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
        assert float((bf16 - fp32).abs().max()) < 0.02
        assert float((bf16 - fp32).abs().mean()) < 0.003
        assert not torch.equal(bf16, fp32)  # it did run in bf16
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in scenes_cnn.parameters())
    assert not scenes_cnn.training


@pytest.mark.parametrize("name", sorted(PRECISION_METRICS))
def test_fp32_default_is_the_plain_forward_bit_for_bit(tiny_cnn, name):
    net = tiny_cnn()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    fn = PRECISION_METRICS[name]
    default = fn(net, x, maps, [0, 1, 2])
    assert torch.equal(default, fn(net, x, maps, [0, 1, 2], precision="fp32", memory_format="contiguous"))
    assert torch.equal(default, fn(net, x, maps, [0, 1, 2], precision="float32", memory_format="auto"))
    if name == "masked_scores":  # and the plain forward itself: no autocast, no layout change
        with torch.no_grad():
            probs = net(torch.cat([x, x * maps[:, None]])).softmax(1)
        assert torch.equal(default.reshape(-1), probs.gather(1, torch.tensor([0, 1, 2] * 2)[:, None])[:, 0])


def test_channels_last_and_precision_choices(tiny_cnn):
    from pytorch_cam.metrics._common import Forward

    net = tiny_cnn()
    assert Forward(net).memory_format == "contiguous"
    assert Forward(net, "bf16").memory_format == "channels_last"  # auto: NHWC for reduced precision convs
    assert Forward(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), "bf16").memory_format == "contiguous"
    assert Forward(net, "fp32", "channels_last").memory_format == "channels_last"
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    exact = deletion_curve(net, x, maps, [0, 1], steps=4)
    nhwc = deletion_curve(net, x, maps, [0, 1], steps=4, memory_format="channels_last")
    assert torch.allclose(exact, nhwc, atol=1e-5)
    with pytest.raises(ValueError, match="precision must be 'fp32'"):
        average_drop(net, x, maps, precision="int8")
    with pytest.raises(ValueError, match="memory_format must be one of"):
        road_curve(net, x, maps, memory_format="nhwc")
    with pytest.raises(ValueError, match="ties must be 'random'"):
        road_curve(net, x, maps, ties="some")


def test_road_ties_all_removes_every_tied_pixel(evidence_model, scenes):
    images, labels, masks = scenes
    # two values only: "all" removes every object pixel at a cut inside the object (> 1 % of the image)
    binary = masks[:2].float()
    _, imgs = road_curve(
        evidence_model, images[:2], binary, labels[:2], percentiles=(1,), ties="all", noise=0.0, return_images=True
    )
    changed = (imgs[:, 0] != images[:2]).any(dim=1)
    assert bool((changed <= masks[:2]).all()) and float(changed.float().sum()) > 0.9 * float(masks[:2].sum())
    _, imgs = road_curve(
        evidence_model, images[:2], binary, labels[:2], percentiles=(1,), noise=0.0, return_images=True
    )
    removed = (imgs[:, 0] != images[:2]).any(dim=1).float().sum(dim=(1, 2))
    assert bool((removed <= round(0.01 * 32 * 32)).all())  # "random": exactly 1 % (a few imputed equal)
    with pytest.raises(TypeError, match="road_score returns scores only"):
        road_score(evidence_model, images[:2], binary, return_images=True)
