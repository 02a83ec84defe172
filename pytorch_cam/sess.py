"""SESS: Saliency Enhancing with Scaling and Sliding.

Tan, Haoyu; Wu, Yuxuan et al., "SESS: Saliency Enhancing with Scaling and Sliding", ECCV 2022.
https://arxiv.org/abs/2207.01769

A meta-method that makes any CAM method robust to object scale, several instances and
distractors. The image is resized so that its shorter side takes each of the scales
s_j = w + j * round(w * scale_step_ratio) (w: the window size), a w x w window slides over every
resized image with stride ``step_size`` (the last window of a row or column is shifted back
inside the image), and every patch i is explained on its own by the base method, giving S_i in
[0, 1]. The patch's target score c_i (on the softmax of the output by default, clipped at 0)
weighs it, relative to the image's best patch:

    M_i = (c_i / max_j c_j) * S_i,  pasted at the patch's place in its resized image and
                                     resized (bilinear) back to the input size
    mean:  L(p) = sum_{i: M_i(p) > theta} M_i(p) / #{i: M_i(p) > theta}   (0 where no patch counts)
    max:   L(p) = max_i M_i(p)

then an optional 11x11 Gaussian blur (sigma 5, reflect-101 border, like OpenCV's GaussianBlur)
and min-max scaling. ``pre_filter_ratio`` drops that fraction of each image's lowest scoring
patches before they are explained.

All patches of all images are scored and explained in batches of ``batch_size`` that mix
images; the base method scales every patch's map on its own, so the batching does not change
the result. Pasting and resizing back is one matrix product per patch (the bilinear resize is
separable and linear), fused with index_add/scatter_reduce on the model's device.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_cam.base_cam import TargetLike, min_max_scale, primary_output
from pytorch_cam.grad_cam import GradCAM
from pytorch_cam.meta_cam import MetaCAM, check_base_method
from pytorch_cam.perturbation import score_rows


def window_starts(length: int, step_size: int, window_size: int) -> List[int]:
    """Start offsets of the windows along one side: every ``step_size`` while the window ends inside
    the image, then one window flush with the far edge (windows never cross the border)."""
    starts = []
    for start in range(0, length, step_size):
        if start + window_size >= length:
            starts.append(max(length - window_size, 0))
            break
        starts.append(start)
    return starts


def shorter_side_size(height: int, width: int, short: int) -> Tuple[int, int]:
    """(H, W) after resizing the shorter side to ``short`` with the aspect ratio kept (torchvision's rule)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def resize_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D linear interpolation with half-pixel centres (cv2.INTER_LINEAR)."""
    eye = torch.eye(n_in, device=device, dtype=torch.float32)[:, None, :]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


def reflect101(index: torch.Tensor, n: int) -> torch.Tensor:
    """Map indices outside [0, n) back inside by mirroring around the edge pixels (OpenCV BORDER_REFLECT_101)."""
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    folded = index.abs() % period
    return torch.where(folded >= n, period - folded, folded)


def gaussian_blur(maps: torch.Tensor, ksize: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Blur maps (B, H, W) like ``cv2.GaussianBlur(m, (ksize, ksize), sigma)``: separable, reflect-101 border."""
    r = ksize // 2
    offsets = torch.arange(ksize, dtype=torch.float64) - r
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(maps.device, maps.dtype)
    h, w = maps.shape[-2:]
    rows = reflect101(torch.arange(-r, h + r, device=maps.device), h)
    cols = reflect101(torch.arange(-r, w + r, device=maps.device), w)
    padded = maps[:, None].index_select(2, rows).index_select(3, cols)
    out = F.conv2d(padded, kernel.reshape(1, 1, 1, ksize))
    out = F.conv2d(out, kernel.reshape(1, 1, ksize, 1))
    return out[:, 0]


class _Plan:
    """Where every patch of an image comes from: its scale and its window's top-left corner.

    Patches are numbered scale by scale, row by row; every image of the batch has the same ones.
    """

    def __init__(self, height: int, width: int, scales: Sequence[int], window: int, step: int, device) -> None:
        self.window = window
        self.sizes: List[Tuple[int, int]] = []
        scale_of, ys, xs = [], [], []
        for j, s in enumerate(scales):
            sh, sw = shorter_side_size(height, width, s)
            self.sizes.append((sh, sw))
            for y in window_starts(sh, step, window):
                for x in window_starts(sw, step, window):
                    scale_of.append(j)
                    ys.append(y)
                    xs.append(x)
        self.scale_of = torch.tensor(scale_of, device=device)
        self.y = torch.tensor(ys, device=device)
        self.x = torch.tensor(xs, device=device)
        # Back to the input size: rows of the resized image -> input rows, and likewise for columns.
        self.back_rows = [resize_matrix(sh, height, device) for sh, _ in self.sizes]
        self.back_cols = [resize_matrix(sw, width, device) for _, sw in self.sizes]

    def __len__(self) -> int:
        return self.scale_of.numel()


class SESS(MetaCAM, name="sess"):
    """SESS on top of any CAM method of this package.

    Args:
        model, target_layers, reshape_transform: as for every method (see ``BaseCAM``).
        base_method: the CAM class that explains every patch (a ``BaseCAM`` subclass, e.g.
            ``GradCAM``, ``EigenCAM``, ``ScoreCAM``); extra keyword arguments go to it.
        scales: the sizes the image's shorter side is resized to, each at least the window;
            default: ``num_scales`` sizes from the window size up in steps of
            ``round(window_size * scale_step_ratio)`` (224, 288, ..., 928 for 224 inputs).
        window_size: side of the square window; default: the input's shorter side (so the
            smallest scale is the image itself).
        step_size: stride of the window; default: the window size (windows at the far edges are
            shifted back inside, so they may overlap).
        pre_filter_ratio: fraction in [0, 1) of each image's lowest scoring patches not explained.
        theta: with ``pool="mean"``, only patch values above ``theta`` are averaged.
        pool: ``"mean"`` (average over the patches that cover a pixel) or ``"max"``.
        smooth: blur the fused map with an 11x11 Gaussian (sigma 5).
        use_softmax_scores: score patches by the target applied to the softmax of the output
            (the paper's confidence); ``False``: to the raw output, clipped at 0.
        batch_size: patches per forward pass, for scoring and for the base method.
        progress: show a tqdm bar over the patches (the base method's own bars are off).
    """

    batched = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[Sequence[nn.Module], nn.Module, None],
        reshape_transform: Any = None,
        base_method: type = GradCAM,
        scales: Optional[Sequence[int]] = None,
        num_scales: int = 12,
        scale_step_ratio: float = 2.0 / 7.0,
        window_size: Optional[int] = None,
        step_size: Optional[int] = None,
        pre_filter_ratio: float = 0.0,
        theta: float = 0.0,
        pool: str = "mean",
        smooth: bool = True,
        use_softmax_scores: bool = True,
        batch_size: int = 32,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        if pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}")
        if not 0.0 <= pre_filter_ratio < 1.0:
            raise ValueError(
                f"pre_filter_ratio must be in [0, 1) (the fraction of patches dropped), got {pre_filter_ratio!r}"
            )
        for name, value in (("num_scales", num_scales), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("window_size", window_size), ("step_size", step_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if scales is not None:
            scales = list(scales)
            if not scales or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in scales):
                raise ValueError(
                    f"scales must be a non-empty list of positive ints (shorter-side sizes), got {scales!r}"
                )
            if window_size is not None and min(scales) < window_size:
                raise ValueError(f"every scale must be at least the window size {window_size}, got {scales}")
        if not scale_step_ratio >= 0:
            raise ValueError(f"scale_step_ratio must be >= 0, got {scale_step_ratio!r}")
        check_base_method(base_method)
        if "progress" in inspect.signature(base_method.__init__).parameters and "progress" not in kwargs:
            kwargs["progress"] = False  # one bar for SESS, not one per batch of patches
        self.base_method = base_method
        self.base_cam = base_method(model, target_layers, reshape_transform=reshape_transform, **kwargs)
        self.scales = None if scales is None else [int(s) for s in scales]
        self.num_scales = int(num_scales)
        self.scale_step_ratio = float(scale_step_ratio)
        self.window_size = None if window_size is None else int(window_size)
        self.step_size = None if step_size is None else int(step_size)
        self.pre_filter_ratio = float(pre_filter_ratio)
        self.theta = float(theta)
        self.pool = pool
        self.smooth = bool(smooth)
        self.use_softmax_scores = bool(use_softmax_scores)
        self.batch_size = int(batch_size)
        self.progress = progress

    def get_scales(self, window_size: int) -> List[int]:
        """The shorter-side sizes the image is resized to, for a window of ``window_size``."""
        if self.scales is not None:
            return list(self.scales)
        step = int(round(window_size * self.scale_step_ratio))
        return [window_size + step * i for i in range(self.num_scales)]

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[Sequence[TargetLike]] = None,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
    ) -> np.ndarray:
        """One SESS map per image: numpy float32 (B, H, W) in [0, 1].

        ``targets=None`` explains each image's top class (on the whole image); ``eigen_smooth``
        and ``aug_smooth`` are passed to the base method for every patch.
        """
        base = self.base_cam
        x = base._check_input(input_tensor)
        if x.ndim != 4:
            raise ValueError(f"SESS explains 2-D images (B, C, H, W); got an input of shape {tuple(x.shape)}")
        b, _, height, width = x.shape
        window = self.window_size if self.window_size is not None else min(height, width)
        step = self.step_size if self.step_size is not None else window
        scales = self.get_scales(window)
        if min(scales) < window:
            raise ValueError(f"every scale must be at least the window size {window}, got {scales}")
        base.ensure_layers(x)
        with base._eval_mode():
            if targets is None:
                with torch.no_grad():
                    outputs = base.run_model(x)
                resolved = base._resolve_targets(None, outputs, b)
                del outputs
            else:
                resolved = base._resolve_targets(targets, None, b)
            plan = _Plan(height, width, scales, window, step, x.device)
            scores = self._score_patches(x, plan, resolved)
            kept = self._keep(scores)
            best = scores.amax(dim=1, keepdim=True)
            weights = torch.where(best > 0, scores / torch.where(best > 0, best, torch.ones_like(best)), 1.0)
            cam = self._fuse(x, plan, resolved, kept, weights, eigen_smooth, aug_smooth)
        if self.smooth:
            cam = gaussian_blur(cam)
        return min_max_scale(cam).detach().float().cpu().numpy()

    # ------------------------------------------------------------------ pipeline
    def _chunks(
        self, x: torch.Tensor, plan: _Plan, selected: torch.Tensor, bar: Any
    ) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches of patches: (patches (n, C, w, w), patch index (n,), image index (n,)).

        ``selected`` (B, P) marks the patches to cut. They come scale by scale, so each scale's
        resized images are made once per pass and only one scale's are held at a time.
        """
        p_idx, b_idx = selected.T.nonzero(as_tuple=True)  # sorted by patch, then image
        offsets = torch.arange(plan.window, device=x.device)
        current: Tuple[int, Optional[torch.Tensor]] = (-1, None)
        for start in range(0, p_idx.numel(), self.batch_size):
            p, bi = p_idx[start : start + self.batch_size], b_idx[start : start + self.batch_size]
            scale_of = plan.scale_of[p]
            pieces = []
            lo = 0
            uniq, counts = torch.unique_consecutive(scale_of, return_counts=True)
            for j, count in zip(uniq.tolist(), counts.tolist()):
                if current[0] != j:
                    current = (j, self._resize(x, plan.sizes[j]))
                pp, bb = p[lo : lo + count], bi[lo : lo + count]
                rows = plan.y[pp][:, None] + offsets
                cols = plan.x[pp][:, None] + offsets
                # (n, w, w, C): the indexed dims come first, the channel slice last.
                pieces.append(current[1][bb[:, None, None], :, rows[:, :, None], cols[:, None, :]])
                lo += count
            patches = torch.cat(pieces).permute(0, 3, 1, 2).contiguous()
            yield patches, p, bi
            if bar is not None:
                bar.update(p.numel())

    @staticmethod
    def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """torchvision's ``resize``: bilinear with antialiasing, the input itself at its own size."""
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        out = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        return out.to(x.dtype)

    def _bar(self, total: int, what: str) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"SESS {what}", leave=False)

    def _score_patches(self, x: torch.Tensor, plan: _Plan, targets: list) -> torch.Tensor:
        """(B, P) target score of every patch, clipped at 0."""
        b = x.shape[0]
        scores = torch.zeros(b, len(plan), device=x.device, dtype=torch.float32)
        bar = self._bar(b * len(plan), "scoring")
        try:
            with torch.no_grad():
                everything = torch.ones(b, len(plan), dtype=torch.bool, device=x.device)
                for patches, p, bi in self._chunks(x, plan, everything, bar):
                    outputs = primary_output(self.base_cam.run_model(patches))
                    if self.use_softmax_scores:
                        outputs = torch.softmax(outputs.float(), dim=-1)
                    scores[bi, p] = score_rows(outputs, targets, bi).float()
        finally:
            if bar is not None:
                bar.close()
        return scores.clamp_min(0)

    def _keep(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, P) mask of the patches explained: all but each image's ``pre_filter_ratio`` lowest scoring."""
        n = scores.shape[1]
        count = n - int(n * self.pre_filter_ratio)
        if count >= n:
            return torch.ones_like(scores, dtype=torch.bool)
        kept = torch.zeros_like(scores, dtype=torch.bool)
        return kept.scatter_(1, scores.topk(count, dim=1).indices, True)

    def _fuse(
        self,
        x: torch.Tensor,
        plan: _Plan,
        targets: list,
        kept: torch.Tensor,
        weights: torch.Tensor,
        eigen_smooth: bool,
        aug_smooth: bool,
    ) -> torch.Tensor:
        """Explain the kept patches, weight them, paste them back at the input size and pool them."""
        b, _, height, width = x.shape
        base = self.base_cam
        total = torch.zeros(b, height, width, device=x.device, dtype=torch.float32)
        counts = torch.zeros_like(total)
        bar = self._bar(int(kept.sum()), "explaining")
        try:
            for patches, p, bi in self._chunks(x, plan, kept, bar):
                patch_targets = [targets[i] for i in bi.tolist()]
                if aug_smooth:
                    cams = base._forward_augmented(patches, patch_targets, eigen_smooth)
                else:
                    cams = base.forward_tensor(patches, patch_targets, eigen_smooth)
                with torch.no_grad():
                    cams = cams.float() * weights[bi, p][:, None, None]
                    full = self._paste(cams, p, plan)
                    if self.pool == "max":
                        n = bi.numel()
                        total.view(b, -1).scatter_reduce_(
                            0, bi[:, None].expand(n, height * width), full.view(n, -1), "amax"
                        )
                    else:
                        counted = full > self.theta
                        total.index_add_(0, bi, torch.where(counted, full, 0.0))
                        counts.index_add_(0, bi, counted.float())
        finally:
            if bar is not None:
                bar.close()
        if self.pool == "max":
            return total
        return torch.where(counts > 0, total / counts.clamp_min(1), 0.0)

    @staticmethod
    def _paste(cams: torch.Tensor, p: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """Patch maps (n, w, w) -> their place in the input-sized map (n, H, W).

        Pasting into a zero canvas of the resized image and resizing it back is linear, so it is
        ``Ry[:, rows] @ cam @ Rx[:, cols].T`` with the interpolation matrices of the patch's scale.
        """
        offsets = torch.arange(plan.window, device=cams.device)
        scale_of = plan.scale_of[p]
        out = []
        lo = 0
        uniq, counts = torch.unique_consecutive(scale_of, return_counts=True)
        for j, count in zip(uniq.tolist(), counts.tolist()):
            pp = p[lo : lo + count]
            rows = plan.y[pp][:, None] + offsets  # (n, w)
            cols = plan.x[pp][:, None] + offsets
            left = plan.back_rows[j][:, rows].permute(1, 0, 2)  # (n, H, w)
            right = plan.back_cols[j][:, cols].permute(1, 2, 0)  # (n, w, W)
            out.append(left @ cams[lo : lo + count] @ right)
            lo += count
        return torch.cat(out)
