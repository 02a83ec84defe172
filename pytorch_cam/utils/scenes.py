"""Synthetic scenes with an exact ground-truth mask, and the small models trained on them.

A test bed for "which map to trust": since the object's mask is exact, a CAM can be scored against
the truth (see ``pytorch_cam.metrics.faithfulness``).

Every scene holds ONE object of one of six classes, at a random position, scale and rotation,
drawn over a cluttered, textured background with small distractors (thin strokes and dots that
belong to no class). The object is drawn last, so its mask is exact: a pixel is in the mask iff
the pixel shows the object. Since nothing but the object says which class the scene is, a
faithful CAM of the predicted class must point at the mask.

Classes (``CLASSES``): disc, square, triangle, cross, ring (its hole is not in the mask) and
checker (a square with a two-colour checkerboard texture, so texture matters too). Colours are
drawn independently of the class.

The generator is vectorised in torch over coordinate grids: 10k scenes take a few seconds on a
CPU. It is deterministic: the same ``(n, seed, size)`` always gives the same tensors.

``ScenesCNN`` (conv blocks, global average pooling and one linear layer, so every CAM method, CAM
included, applies; its target layer is ``model.features[-1]``, also ``model.target_layer``,
16x16 for 64x64 inputs) and ``ScenesViT`` (a tiny torchvision ViT) are the models to explain.
``load_trained_cnn(path)`` / ``load_trained_vit(path)`` load trained weights from a state-dict
file, or train the model (seeded, CPU, a few minutes) and save it there when the file is
missing. The repository ships trained weights under ``benchmarks/models/``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLASSES = ("disc", "square", "triangle", "cross", "ring", "checker")
NUM_CLASSES = len(CLASSES)

#: seeds at or above this are used for training; evaluate on smaller seeds (e.g. 0)
TRAIN_SEED_BASE = 1_000_000

TRAIN_EPOCHS = 30
VIT_EPOCHS = 60
_CHUNK = 1024  # scenes rendered at once; bounds peak memory to a few hundred MB


def _u(g: torch.Generator, *shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def _shape_mask(label: int, u: Tensor, v: Tensor) -> Tensor:
    """Pixels inside a shape of class ``label``, from object-frame coordinates in object radii."""
    name = CLASSES[label]
    if name in ("disc", "ring"):
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2) if name == "ring" else r2 <= 1.0
    if name in ("square", "checker"):  # rotated: also diamonds
        return torch.maximum(u.abs(), v.abs()) <= 0.8
    if name == "triangle":  # equilateral, apex up in its own frame
        return (v <= 0.55) & (v >= -1.1 + math.sqrt(3.0) * u.abs())
    au, av = u.abs(), v.abs()  # cross
    return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))


def _render(g: torch.Generator, n: int, size: int) -> Tuple[Tensor, Tensor, Tensor]:
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    xx, yy = xx[None], yy[None]  # (1, H, W)

    # --- background: base colour + 3 oriented sinusoids (random colour each) + bicubic blotches
    base = _u(g, n, 3, lo=0.15, hi=0.85)
    freq = _u(g, n, 3, 1, 1, lo=0.04, hi=0.22)
    theta = _u(g, n, 3, 1, 1, hi=math.pi)
    phase = _u(g, n, 3, 1, 1, hi=2 * math.pi)
    amp = _u(g, n, 3, 3, lo=-0.15, hi=0.15)  # (N, colour, wave)
    waves = torch.sin(2 * math.pi * freq * (xx[:, None] * torch.cos(theta) + yy[:, None] * torch.sin(theta)) + phase)
    img = torch.bmm(amp, waves.reshape(n, 3, -1)).reshape(n, 3, size, size) + base[:, :, None, None]
    img += F.interpolate(_u(g, n, 3, 4, 4, lo=-0.15, hi=0.15), size=(size, size), mode="bicubic", align_corners=False)

    # --- distractors: thin strokes and small dots of random colour, never of an object class.
    # Each pixel takes the colour of the last distractor covering it (index 0 = none).
    k_max = 5
    cover = torch.zeros(n, size, size, dtype=torch.long)
    for k in range(1, k_max + 1):
        active = _u(g, n) < 0.8
        is_line = _u(g, n) < 0.5
        p0 = _u(g, n, 2, hi=size)
        angle = _u(g, n, hi=2 * math.pi)
        length = _u(g, n, lo=0.12 * size, hi=0.35 * size)
        d = length[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        dot_radius = _u(g, n, lo=0.02 * size, hi=0.045 * size)
        width = _u(g, n, lo=0.6, hi=1.3)
        px = xx - p0[:, 0, None, None]
        py = yy - p0[:, 1, None, None]
        dx, dy = d[:, 0, None, None], d[:, 1, None, None]
        # distance to the segment for strokes; a dot is a segment of length 0 with a larger radius
        t = ((px * dx + py * dy) / (dx * dx + dy * dy)).clamp_(0, 1) * is_line[:, None, None]
        reach = torch.where(is_line, width, dot_radius) * active
        drawn = (px - t * dx).square_() + (py - t * dy).square_() <= reach.square()[:, None, None]
        cover.masked_fill_(drawn, k)
    palette = torch.cat([torch.zeros(n, 1, 3), _u(g, n, k_max, 3)], dim=1)  # (N, 1 + K, 3)
    clutter = palette.gather(1, cover.reshape(n, -1, 1).expand(-1, -1, 3))  # (N, HW, 3)
    img = torch.where((cover > 0)[:, None], clutter.transpose(1, 2).reshape(n, 3, size, size), img)

    # --- the object, fully inside the image
    labels = torch.randint(NUM_CLASSES, (n,), generator=g)
    radius = _u(g, n, lo=0.12 * size, hi=0.25 * size)
    centre = radius[:, None] + _u(g, n, 2) * (size - 2 * radius[:, None])
    rot = _u(g, n, hi=2 * math.pi)
    light = _u(g, n, lo=-1, hi=1)
    colour = _u(g, n, 3)
    dx = (xx - centre[:, 0, None, None]) / radius[:, None, None]
    dy = (yy - centre[:, 1, None, None]) / radius[:, None, None]
    c, s = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    for k in range(NUM_CLASSES):  # each scene only evaluates its own shape
        idx = (labels == k).nonzero()[:, 0]
        mask[idx] = _shape_mask(k, u[idx], v[idx])

    # Object colour: random, but at least 0.3 away from the background's mean brightness.
    delta = colour.mean(1) - base.mean(1)
    sign = torch.where(delta >= 0, 1.0, -1.0)
    colour = (colour + sign[:, None] * (0.3 - delta.abs()).clamp(min=0)[:, None]).clamp(0, 1)
    second = torch.where(colour.mean(1, keepdim=True) > 0.5, colour * 0.35, 1 - 0.35 * (1 - colour))
    obj = colour[:, :, None, None] * (1 + 0.12 * light[:, None, None] * u)[:, None]  # gentle lighting gradient
    idx = (labels == CLASSES.index("checker")).nonzero()[:, 0]
    parity = (torch.floor(u[idx] / 0.4) + torch.floor(v[idx] / 0.4)).remainder(2) == 0
    checker_obj = second[idx, :, None, None] * (1 + 0.12 * light[idx, None, None] * u[idx])[:, None]
    obj[idx] = torch.where(parity[:, None], obj[idx], checker_obj)
    img = torch.where(mask[:, None], obj, img)

    img += 0.02 * torch.randn(img.shape, generator=g)
    return img.clamp_(0, 1), labels, mask


def generate_scenes(n: int, seed: int, size: int = 64) -> Tuple[Tensor, Tensor, Tensor]:
    """``n`` deterministic scenes: images (N, 3, H, W) float32 in [0, 1], labels (N,) long,
    masks (N, H, W) bool (True on the object's pixels)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16 (objects need a few pixels), got {size!r}")
    g = torch.Generator().manual_seed(int(seed))
    parts = [_render(g, min(_CHUNK, n - start), size) for start in range(0, n, _CHUNK)]
    if not parts:
        empty = torch.zeros(0, size, size)
        return empty[:, None].expand(0, 3, size, size).clone(), torch.zeros(0, dtype=torch.long), empty.bool()
    images, labels, masks = (torch.cat(p) for p in zip(*parts))
    return images, labels, masks


class ScenesCNN(nn.Module):
    """Five 3x3 conv blocks (BN + ReLU, two max-pools), global average pooling, one linear layer.

    Takes images in [0, 1]. ``features[-1]`` (the last ReLU, stride 4) is the layer to explain;
    ``fc`` holds the class weights that the original CAM uses.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 32) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> list:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]

        self.features = nn.Sequential(
            *block(3, w // 2),
            nn.MaxPool2d(2),
            *block(w // 2, w),
            *block(w, w),
            nn.MaxPool2d(2),
            *block(w, 2 * w),
            *block(2 * w, 2 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, num_classes)

    @property
    def target_layer(self) -> nn.Module:
        return self.features[-1]

    def forward(self, x: Tensor) -> Tensor:
        x = self.features((x - 0.5) / 0.25)
        return self.fc(torch.flatten(self.pool(x), 1))


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on the given scenes."""
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        pred = model(images[i : i + batch_size].to(device)).argmax(1).cpu()
        correct += int((pred == labels[i : i + batch_size]).sum())
    return correct / max(1, len(images))


class ScenesViT(nn.Module):
    """A tiny torchvision ``VisionTransformer`` for 64x64 scenes: a convolutional stem of total
    stride 8 (an 8x8 token grid),
    4 pre-norm blocks of width 64 with 4 heads, class-token head. (4x4 patches would match the
    CNN's 16x16 map but cost 6x the training time, over the 3-minute CPU budget.)

    Takes images in [0, 1]. The layer to explain is the last block's first norm
    (``target_layer``): its 1 + 64 tokens reach the class token through the last attention, and
    ``pytorch_cam`` infers the 8x8 grid (class token dropped) with no ``reshape_transform``.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, size: int = 64) -> None:
        super().__init__()
        from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

        # Three stride-2 3x3 convolutions instead of one 8x8 patch projection (Xiao et al. 2021,
        # "Early Convolutions Help Transformers See Better"): a plain patchify ViT of this size
        # was still at ~60% accuracy after 80 s of CPU training; the convolutional stem gets it
        # past 95% within the budget. The encoder, and what CAM methods see, is a plain ViT.
        stem = [ConvStemConfig(out_channels=c, kernel_size=3, stride=2) for c in (16, 32, 64)]
        self.vit = VisionTransformer(
            image_size=size,
            patch_size=8,
            num_layers=4,
            num_heads=4,
            hidden_dim=64,
            mlp_dim=128,
            num_classes=num_classes,
            conv_stem_configs=stem,
        )

    @property
    def target_layer(self) -> nn.Module:
        return self.vit.encoder.layers[-1].ln_1

    def forward(self, x: Tensor) -> Tensor:
        return self.vit((x - 0.5) / 0.25)


def train_model(
    model: nn.Module,
    seed: int = 0,
    epochs: int = TRAIN_EPOCHS,
    scenes_per_epoch: int = 2048,
    batch_size: int = 64,
    size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    warmup: float = 0.0,
    verbose: bool = True,
    on_epoch: Optional[Callable[[int, nn.Module], None]] = None,
) -> nn.Module:
    """Train ``model`` on fresh scenes every epoch (CPU, seeded, reproducible).

    AdamW; a linear warm-up over the first ``warmup`` fraction of the steps, a constant learning
    rate up to 60% of them, then a linear decay to 0 that settles the weights. ``on_epoch(k,
    model)`` sees the model after every epoch (e.g. to checkpoint).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(scenes_per_epoch / batch_size)
    warm = max(1, int(warmup * steps))

    def factor(t: int) -> float:
        return min(1.0, (t + 1) / warm if warmup > 0 else 1.0, (steps - t) / (0.4 * steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    start = time.perf_counter()
    val_images, val_labels, _ = generate_scenes(512, 7, size)
    for epoch in range(epochs):
        images, labels, _ = generate_scenes(scenes_per_epoch, TRAIN_SEED_BASE + seed * 1000 + epoch, size)
        model.train()
        total = 0.0
        for i in range(0, scenes_per_epoch, batch_size):
            loss = F.cross_entropy(model(images[i : i + batch_size]), labels[i : i + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(labels[i : i + batch_size])
        model.eval()
        if verbose:
            val = accuracy(model, val_images, val_labels)
            print(
                f"epoch {epoch + 1}/{epochs}: loss {total / scenes_per_epoch:.3f}, "
                f"val acc {val:.3f} ({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    return model.eval()


def train_cnn(seed: int = 0, epochs: int = TRAIN_EPOCHS, **kw) -> ScenesCNN:
    """``ScenesCNN`` trained from scratch (Adam-equivalent: AdamW without weight decay, lr 2e-3)."""
    torch.manual_seed(seed)
    return train_model(ScenesCNN(), seed=seed, epochs=epochs, **kw)


def train_vit(seed: int = 0, epochs: int = VIT_EPOCHS, **kw) -> ScenesViT:
    """``ScenesViT`` trained from scratch (AdamW, lr 1e-3, weight decay 0.05, 5% warm-up)."""
    torch.manual_seed(seed)
    kw = {"lr": 1e-3, "weight_decay": 0.05, "warmup": 0.05, **kw}
    return train_model(ScenesViT(), seed=seed, epochs=epochs, **kw)


def _load_or_train(model: nn.Module, path: Path, train: Callable[[], nn.Module]) -> nn.Module:
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model
    model = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def load_trained_cnn(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> ScenesCNN:
    """The scenes CNN with the weights saved at ``path``, in eval mode.

    If ``path`` is not a file, the CNN is trained (``train_cnn``, a few minutes on a CPU) and
    saved there first.
    """
    return _load_or_train(ScenesCNN(), Path(path), train_cnn).to(device).eval()


def load_trained_vit(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> ScenesViT:
    """The scenes ViT with the weights saved at ``path``, in eval mode (trained and saved first if
    ``path`` is not a file)."""
    return _load_or_train(ScenesViT(), Path(path), train_vit).to(device).eval()
