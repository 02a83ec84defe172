"""Image helpers: preprocessing, overlays and map scaling (numpy in, numpy out)."""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Union

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "show_cam_on_image",
    "preprocess_image",
    "deprocess_image",
    "scale_cam_image",
    "scale_accross_batch_and_channels",
    "load_image",
    "show_factorization_on_image",
    "create_labels_legend",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]


def load_image(path: str) -> np.ndarray:
    """Read an image file as float32 RGB in [0, 1] (H, W, 3)."""
    # Decoding bytes we read ourselves keeps OpenCV quiet: cv2.imread prints its own "[ WARN ...
    # findDecoder ...]" line to stderr before we could report the problem in one line.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        data = np.zeros(0, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise FileNotFoundError(
            f"could not read an image from {str(path)!r}: the file is missing or not an image "
            "format OpenCV can decode (png, jpg, bmp, ...); check the path"
        )
    return np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255.0


def show_cam_on_image(
    img: np.ndarray,
    mask: np.ndarray,
    use_rgb: bool = False,
    colormap: int = cv2.COLORMAP_JET,
    image_weight: float = 0.5,
) -> np.ndarray:
    """Blend a colour-mapped CAM (H, W) in [0, 1] over a float image (H, W, 3) in [0, 1].

    Returns a uint8 image; RGB if ``use_rgb`` else BGR (OpenCV's order, ready for cv2.imwrite).
    """
    img = np.asarray(img)
    mask = np.asarray(mask)
    if not np.issubdtype(img.dtype, np.floating) or img.size == 0 or img.min() < 0 or img.max() > 1:
        raise ValueError(
            "show_cam_on_image expects img as floats in [0, 1]; divide a uint8 image by 255 (np.float32(img) / 255)"
        )
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    if mask.ndim != 2 or img.ndim != 3 or mask.shape != img.shape[:2]:
        raise ValueError(
            f"mask {mask.shape} must be 2-D with the image's height and width {img.shape[:2]}; "
            "pass one map of the batch, e.g. maps[0]"
        )
    heat = cv2.applyColorMap(np.uint8(np.clip(mask, 0, 1) * 255), colormap)
    if use_rgb:
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    blend = (1.0 - image_weight) * np.float32(heat) / 255.0 + image_weight * img
    peak = blend.max()
    if peak > 0:
        blend = blend / peak
    return np.uint8(np.round(255 * blend))


def preprocess_image(
    img: np.ndarray,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """(H, W, C) image -> normalised (1, C, H, W) float32 tensor: ``(img - mean) / std`` per channel.

    The defaults (0.5, 0.5, 0.5) map [0, 1] to [-1, 1], as pytorch-grad-cam's do; torchvision's
    ImageNet-trained models expect ``mean=IMAGENET_MEAN, std=IMAGENET_STD`` instead. A uint8 image
    is divided by 255 first (as ``torchvision.transforms.ToTensor`` does); a float image is taken
    as already in [0, 1].
    """
    arr = np.asarray(img)
    if arr.ndim != 3:
        raise ValueError(
            f"preprocess_image expects an (H, W, channels) image, got shape {arr.shape}; "
            "add the channel axis with img[..., None] for a grey image"
        )
    scale = 1.0 / 255.0 if arr.dtype == np.uint8 else 1.0
    arr = arr.astype(np.float32) * np.float32(scale)
    mean_arr, std_arr = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean_arr.size not in (1, arr.shape[2]) or std_arr.size not in (1, arr.shape[2]):
        raise ValueError(
            f"mean ({mean_arr.size} values) and std ({std_arr.size} values) must have one value per channel "
            f"of the image ({arr.shape[2]}) or a single value"
        )
    if np.any(std_arr == 0):
        raise ValueError(f"std must not contain 0, got {list(np.ravel(std_arr))}")
    arr = (arr - mean_arr.reshape(-1)) / std_arr.reshape(-1)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """Map an arbitrary-range image (e.g. guided backprop) to a viewable uint8 image."""
    img = np.asarray(img, dtype=np.float32)
    img = img - img.mean()
    img = img / (img.std() + 1e-5)
    img = np.clip(img * 0.1 + 0.5, 0, 1)
    return np.uint8(img * 255)


def scale_cam_image(cam: np.ndarray, target_size: Optional[Sequence[int]] = None) -> np.ndarray:
    """Min-max scale each map of a batch to [0, 1] and optionally resize it.

    ``cam`` is (N, H, W) or, for volumes, (N, D, H, W). ``target_size`` lists the sizes in reverse
    axis order, as in pytorch-grad-cam and OpenCV: ``(width, height)`` for 2-D maps,
    ``(width, height, depth)`` for 3-D ones. 2-D maps are resized bilinearly with OpenCV, 3-D maps
    trilinearly with torch (pytorch-grad-cam uses a cubic spline there). A constant map scales to 0.
    """
    out = []
    for m in np.asarray(cam, dtype=np.float32):
        rng = m.max() - m.min()
        m = (m - m.min()) / rng if rng > 0 else np.zeros_like(m)
        if target_size is not None:
            m = _resize(m, target_size)
        out.append(m)
    return np.float32(out)


def _resize(m: np.ndarray, target_size: Sequence[int]) -> np.ndarray:
    size = tuple(int(s) for s in target_size)
    if len(size) != m.ndim:
        raise ValueError(
            f"target_size {size} must give one size per axis of the {m.ndim}-D map {m.shape}, in reverse order "
            "((width, height) for 2-D maps)"
        )
    if m.ndim == 2:
        return cv2.resize(m, size)
    t = torch.from_numpy(np.ascontiguousarray(m))[None, None]
    mode = {1: "linear", 3: "trilinear"}.get(m.ndim)
    if mode is None:
        raise ValueError(f"cannot resize a {m.ndim}-D map; maps must be 1-, 2- or 3-D")
    return torch.nn.functional.interpolate(t, size=size[::-1], mode=mode, align_corners=False)[0, 0].numpy()


def scale_accross_batch_and_channels(tensor: np.ndarray, target_size: Optional[Sequence[int]]) -> np.ndarray:
    """``scale_cam_image`` for every (image, channel) map of a (B, C, *spatial) array.

    Each map is min-max scaled to [0, 1] on its own and resized to ``target_size`` (reverse axis
    order: ``(width, height)``); the result is float32 (B, C, *reversed(target_size)). The name's
    spelling is pytorch-grad-cam's.
    """
    arr = np.asarray(tensor.detach().cpu().numpy() if torch.is_tensor(tensor) else tensor, dtype=np.float32)
    if arr.ndim < 3:
        raise ValueError(f"expected a (batch, channels, *spatial) array, got shape {arr.shape}")
    batch, channels = arr.shape[:2]
    scaled = scale_cam_image(arr.reshape(batch * channels, *arr.shape[2:]), target_size)
    return scaled.reshape(batch, channels, *scaled.shape[1:])


# matplotlib's 'gist_rainbow' colour map (the DFF authors' default), as (position, RGB) stops. Kept
# here so that colouring a factorisation needs no matplotlib; only the legend does.
_GIST_RAINBOW = (
    (0.000, (1.00, 0.00, 0.16)),
    (0.030, (1.00, 0.00, 0.00)),
    (0.215, (1.00, 1.00, 0.00)),
    (0.400, (0.00, 1.00, 0.00)),
    (0.586, (0.00, 1.00, 1.00)),
    (0.770, (0.00, 0.00, 1.00)),
    (0.954, (1.00, 0.00, 1.00)),
    (1.000, (1.00, 0.00, 0.75)),
)


def _gist_rainbow(n: int) -> List[np.ndarray]:
    """n RGBA colours at 0, 1/n, 2/n, ... on gist_rainbow, bit for bit as matplotlib returns them.

    matplotlib samples the stops' piecewise-linear interpolation into a 256-entry lookup table and
    maps x to entry int(256 x); the arithmetic below follows it exactly, so that the uint8 colours
    (truncated, not rounded) do not differ by one.
    """
    size = 256
    stops = np.array([p for p, _ in _GIST_RAINBOW]) * (size - 1)
    rgb = np.array([c for _, c in _GIST_RAINBOW])
    grid = (size - 1) * np.linspace(0, 1, size)
    upper = np.searchsorted(stops, grid)[1:-1]
    frac = ((grid[1:-1] - stops[upper - 1]) / (stops[upper] - stops[upper - 1]))[:, None]
    lut = np.concatenate([rgb[:1], frac * (rgb[upper] - rgb[upper - 1]) + rgb[upper - 1], rgb[-1:]])
    lut = np.clip(lut, 0.0, 1.0)
    index = np.minimum((np.arange(n) * (1.0 / n) * size).astype(int), size - 1)
    return [np.append(lut[i], 1.0) for i in index]


def show_factorization_on_image(
    img: np.ndarray,
    explanations: np.ndarray,
    colors: Optional[Sequence[Sequence[float]]] = None,
    image_weight: float = 0.5,
    concept_labels: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Paint each pixel with the colour of its strongest concept, as bright as that concept is there.

    Args:
        img: float RGB image (H, W, 3) in [0, 1].
        explanations: the concept maps of one image (k, h, w) in [0, 1], e.g.
            ``DeepFeatureFactorization(...)(x)[1][0]``; resized to (H, W) when their size differs.
        colors: k RGB(A) colours in [0, 1]; default: k colours spread over matplotlib's
            'gist_rainbow' map.
        image_weight: the blend: ``image_weight * img + (1 - image_weight) * painted``.
        concept_labels: one string per concept; when given, a legend panel (H, W) rendered with
            matplotlib is appended on the right.

    Returns:
        uint8 RGB image (H, W, 3), or (H, 2W, 3) with the legend.

    Each pixel takes the hue and saturation of the concept whose map is largest there, and that
    map's value as its HSV value (brightness); other concepts contribute nothing to it.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be an RGB image (H, W, 3), got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating) or img.size == 0 or img.min() < 0 or img.max() > 1:
        raise ValueError(
            "show_factorization_on_image expects img as floats in [0, 1]; divide a uint8 image by 255 "
            "(np.float32(img) / 255)"
        )
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    maps = np.asarray(explanations, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(
            f"explanations must be one image's concept maps (k, h, w), got shape {maps.shape}; pass "
            "one image of the batch, e.g. batch_explanations[0]"
        )
    n_components = maps.shape[0]
    height, width = img.shape[:2]
    if maps.shape[1:] != (height, width):
        maps = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])
    if colors is None:
        colors = _gist_rainbow(n_components)
    if len(colors) < n_components:
        raise ValueError(f"got {len(colors)} colors for {n_components} concepts; pass one colour per concept")
    palette = np.array([np.asarray(c, dtype=np.float64)[:3] for c in colors[:n_components]])
    if palette.shape != (n_components, 3) or palette.min() < 0 or palette.max() > 1:
        raise ValueError("colors must be RGB or RGBA sequences with values in [0, 1], e.g. (1.0, 0.5, 0.0)")

    # Hue/saturation of each concept's colour, computed the way OpenCV quantises a uint8 image.
    hsv_palette = cv2.cvtColor(np.uint8(palette * 255)[None], cv2.COLOR_RGB2HSV)[0]
    winner = maps.argmax(axis=0)
    strength = np.clip(np.take_along_axis(maps, winner[None], axis=0)[0], 0.0, 1.0)
    hsv = hsv_palette[winner]
    hsv[..., 2] = np.uint8(255 * strength)
    painted = np.float32(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)) / 255
    result = np.uint8((img * image_weight + painted * (1 - image_weight)) * 255)

    if concept_labels is not None:
        if len(concept_labels) < n_components:
            raise ValueError(
                f"got {len(concept_labels)} concept_labels for {n_components} concepts; pass one per concept"
            )
        legend = _legend_panel(
            [np.asarray(c, dtype=np.float64) for c in colors[:n_components]],
            [str(label) for label in concept_labels[:n_components]],
            height,
            width,
        )
        result = np.hstack((result, legend))
    return result


def _legend_panel(colors: List[np.ndarray], labels: List[str], height: int, width: int) -> np.ndarray:
    """A (height, width, 3) uint8 picture of a legend: one coloured line and its label per concept."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as err:
        raise ImportError(
            "the concept legend of show_factorization_on_image is drawn with matplotlib, which is not "
            "installed; pip install matplotlib (or pass concept_labels=None for the picture alone)"
        ) from err
    dpi = 100
    # A standalone figure (not pyplot): no global state, no GUI backend, safe in threads.
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    # Sizes scale with the image height (set for 256 px) and shrink past 6 concepts.
    fontsize = max(1.0, 14 * height / 256 / max(1.0, len(labels) / 6))
    handles = [Line2D([0], [0], color=c, lw=5 * height / 256) for c in colors]
    for _ in range(3):
        legend = ax.legend(
            handles, labels, loc="upper left", mode="expand", fancybox=True, shadow=True, fontsize=fontsize
        )
        canvas.draw()
        # Multi-line labels (top_k > 1) can overflow the panel: shrink the text until it fits.
        tall = legend.get_window_extent().height
        if tall <= height or fontsize <= 1.0:
            break
        legend.remove()
        fontsize = max(1.0, fontsize * 0.95 * height / tall)
    panel = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if panel.shape[:2] != (height, width):
        panel = cv2.resize(panel, (width, height), interpolation=cv2.INTER_AREA)
    return panel


def create_labels_legend(
    concept_scores: Union[np.ndarray, torch.Tensor],
    labels: Union[Mapping[int, str], Sequence[str]],
    top_k: int = 2,
) -> List[str]:
    """One legend string per concept: its ``top_k`` categories, best first, as "name:score" lines.

    Args:
        concept_scores: (k, num_categories) scores of each concept, e.g. the softmax of a classifier
            run on the concept embeddings.
        labels: category index -> name (a dict such as a Hugging Face ``config.id2label``, or a
            list). Only the first three comma-separated synonyms of a name are kept.
        top_k: the number of categories listed per concept (fewer if there are fewer categories).
    """
    scores = concept_scores.detach().cpu().numpy() if torch.is_tensor(concept_scores) else np.asarray(concept_scores)
    if scores.ndim != 2:
        raise ValueError(f"concept_scores must be (concepts, categories), got shape {scores.shape}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    best = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    legend = []
    for concept, categories in enumerate(best):
        lines = []
        for category in categories.tolist():
            try:
                name = str(labels[category])
            except (KeyError, IndexError):
                raise ValueError(
                    f"labels has no name for category {category} (concept_scores has {scores.shape[1]} "
                    "categories); pass a label for every category index"
                ) from None
            lines.append(f"{','.join(name.split(',')[:3])}:{scores[concept, category]:.2f}")
        legend.append("\n".join(lines))
    return legend
