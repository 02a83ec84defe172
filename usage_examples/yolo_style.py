"""EigenCAM and Grad-CAM for a YOLO-style detector whose output is a tuple, with no wrapper.

    python usage_examples/yolo_style.py                          # writes cam_output/yolo_style/*.png
    python usage_examples/yolo_style.py --box 20 60 100 110 --output-dir /tmp/yolo

The detector (defined below, random weights, offline) returns ``(predictions, features)`` like a
YOLOv5 model in eval mode: ``predictions`` is (B, cells, 5 + classes) — box centre and size in
pixels, objectness, class scores — and there is no (B, classes) tensor to pick a "top class" from.

* EigenCAM is class-agnostic: ``targets=None`` works, the map is the first principal component
  of the target layer's activations.
* Grad-CAM needs to know which score to explain. Called without targets it raises a ValueError
  that describes the output and what to pass; here a ``callable(one image's predictions) ->
  scalar`` does it: the objectness of the cells whose centre lies in a box.

The scene is "planted": the bundled photo is pasted into a black canvas at ``--box``. The
backbone has no biases, so black pixels give exactly zero features and the evidence can only
come from the photo: the maps must put their energy in (a cell's margin around) the box, which
the script prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from pytorch_cam import EigenCAM, GradCAM
from pytorch_cam.utils.image import load_image, show_cam_on_image

DEFAULT_IMAGE = Path(__file__).resolve().parents[1] / "pytorch_cam" / "data" / "chelsea.png"
DEFAULT_OUTPUT_DIR = Path("cam_output") / "yolo_style"
Box = Tuple[int, int, int, int]


class TinyYOLO(nn.Module):
    """A stride-8 single-scale detector: three bias-free conv+ReLU stages, a 1x1 prediction head.

    ``forward`` returns ``(predictions, features)``: predictions (B, h*w, 5 + classes) hold the
    decoded box ``(cx, cy, w, h)`` in pixels, the objectness and the class probabilities of every
    grid cell (row-major), as YOLO's inference output does.
    """

    stride = 8

    def __init__(self, classes: int = 3, width: int = 32) -> None:
        super().__init__()
        # No biases: a black (all-zero) region gives exactly zero features at every stage.
        self.backbone = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(width * 2, 5 + classes, 1)
        with torch.no_grad():
            # Untrained, but not blind: objectness grows with the features' energy (non-negative
            # weights), so the detector's objectness is highest where there is something to see.
            self.head.weight[4].abs_()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        raw = self.head(features)  # (B, 5 + classes, h, w)
        b, n, h, w = raw.shape
        raw = raw.permute(0, 2, 3, 1).reshape(b, h * w, n)
        ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
        grid = torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2).to(raw.dtype)
        centre = (torch.sigmoid(raw[..., :2]) + grid) * self.stride
        size = torch.exp(raw[..., 2:4].clamp(max=4.0)) * self.stride
        scores = torch.sigmoid(raw[..., 4:])  # objectness, then one probability per class
        return torch.cat([centre, size, scores], dim=-1), features


class ObjectnessInBox:
    """Target: the summed objectness of the grid cells whose centre lies inside ``box`` (x1, y1, x2, y2).

    Called with one image's predictions (cells, 5 + classes), as every target is.
    """

    def __init__(self, box: Box, image_size: Tuple[int, int], stride: int = TinyYOLO.stride) -> None:
        h, w = (image_size[0] + stride - 1) // stride, (image_size[1] + stride - 1) // stride
        cy, cx = np.meshgrid((np.arange(h) + 0.5) * stride, (np.arange(w) + 0.5) * stride, indexing="ij")
        x1, y1, x2, y2 = box
        inside = (cx >= x1) & (cx < x2) & (cy >= y1) & (cy < y2)
        self.cells = torch.as_tensor(np.flatnonzero(inside.reshape(-1)))

    def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
        return predictions[self.cells.to(predictions.device), 4].sum()


def planted_scene(box: Box, size: int, image_path: Optional[str] = None) -> np.ndarray:
    """A black size x size RGB canvas (float32 in [0, 1]) with the photo resized into ``box``."""
    photo = load_image(image_path or str(DEFAULT_IMAGE))
    x1, y1, x2, y2 = box
    if not (0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size):
        raise ValueError(f"--box {box} must satisfy 0 <= x1 < x2 <= {size} and 0 <= y1 < y2 <= {size}")
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[y1:y2, x1:x2] = cv2.resize(photo, (x2 - x1, y2 - y1), interpolation=cv2.INTER_AREA)
    return canvas


def box_energy(cam: np.ndarray, box: Box, margin: int = 0) -> float:
    """The share of a map's total (H, W) that lies in ``box`` grown by ``margin`` pixels."""
    x1, y1, x2, y2 = box
    h, w = cam.shape
    inside = cam[max(0, y1 - margin) : min(h, y2 + margin), max(0, x1 - margin) : min(w, x2 + margin)].sum()
    total = cam.sum()
    return float(inside / total) if total > 0 else 0.0


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-path", default=None, help=f"photo to plant (default: {DEFAULT_IMAGE.name})")
    p.add_argument("--image-size", type=int, default=128, help="side of the square canvas (a multiple of 8)")
    p.add_argument("--box", type=int, nargs=4, default=(64, 24, 120, 80), metavar=("X1", "Y1", "X2", "Y2"))
    p.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR), help="where to write the PNGs")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """Run the example; writes eigencam.png and gradcam.png, returns {method: maps (1, H, W)}."""
    args = parse_args(argv)
    box: Box = tuple(args.box)
    scene = planted_scene(box, args.image_size, args.image_path)
    x = torch.from_numpy(scene.transpose(2, 0, 1)).unsqueeze(0).to(args.device)  # [0, 1] pixels, as YOLO takes

    torch.manual_seed(0)
    model = TinyYOLO().to(args.device).eval()
    print("TinyYOLO with random weights (seed 0): the maps show where the evidence is, not a trained detector")
    layers = [model.backbone[-1]]

    maps = {}
    # Class-agnostic: no target needed, whatever the model returns.
    maps["eigencam"] = EigenCAM(model, layers)(x)
    # Grad-CAM cannot guess which of the tuple's scores to explain ...
    try:
        GradCAM(model, layers)(x)
    except ValueError as err:
        print(f"GradCAM without targets: {err}")
    # ... so name it: a callable on one image's predictions.
    target = ObjectnessInBox(box, scene.shape[:2])
    maps["gradcam"] = GradCAM(model, layers)(x, targets=[target])

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, cam in maps.items():
        overlay = show_cam_on_image(scene, cam[0])
        cv2.rectangle(overlay, box[:2], (box[2] - 1, box[3] - 1), (255, 255, 255), 1)
        path = out_dir / f"{name}.png"
        cv2.imwrite(str(path), overlay)
        share = box_energy(cam[0], box, margin=2 * model.stride)
        print(f"{name}: {share:.1%} of the map lies within two grid cells of the box")
    print(f"wrote {', '.join(f'{n}.png' for n in maps)} to {out_dir}")
    return maps


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
