"""Deep Feature Factorization (DFF).

Collins, Achanta & Süsstrunk, "Deep Feature Factorization For Concept Discovery", ECCV 2018.
https://arxiv.org/abs/1806.10206

A layer's activations for a batch of B images, one column per position, form a non-negative
matrix A (C, B*h*w); non-negative matrix factorisation with k components

    A ~ W H,    W (C, k) >= 0,    H (k, B*h*w) >= 0

gives k concepts: column j of W is a direction in channel space (what the concept looks like to
the network) and row j of H, reshaped to (B, h, w), is where concept j is present in each image.
The factorisation spans the whole batch, so concept j is the same concept in every image (the
paper's co-segmentation). Running a classifier head on the concept embeddings (the columns of W)
names them.

As in pytorch-grad-cam: each channel is first shifted by its minimum over the batch so that the
matrix is non-negative (a no-op after a ReLU, whose minimum is 0; needed for LayerNorm/GELU
outputs such as ViT tokens), and the returned concepts have the shift added back. The heatmaps are
min-max scaled to [0, 1] per image and concept, and resized to the input.

The NMF runs in torch on the model's device (``pytorch_cam.utils.nmf``: HALS, i.e. the same
coordinate descent as scikit-learn's, accelerated by extrapolation, from a seeded random start)
instead of scikit-learn: factors may differ (NMF is not unique), the reconstruction error matches.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from pytorch_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_cam.base_cam import BaseCAM, CallState, min_max_scale, model_device, resize_maps
from pytorch_cam.utils.image import create_labels_legend, show_factorization_on_image
from pytorch_cam.utils.model_state import PerThreadResults
from pytorch_cam.utils.nmf import nmf

__all__ = ["DeepFeatureFactorization", "dff", "run_dff_on_image"]

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


def _check_n_components(n_components: int) -> None:
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components (the number of concepts) must be an integer >= 1, got {n_components!r}")


def dff(activations: ArrayOrTensor, n_components: int = 5) -> Tuple[ArrayOrTensor, ArrayOrTensor]:
    """Factorise a batch of activations (B, C, h, w) into ``n_components`` concepts.

    Returns ``(concepts, explanations)``: concepts (C, k), the concept embeddings in activation
    space (per-channel shift added back), and explanations (B, k, h, w), the unscaled concept
    maps at the layer's resolution. numpy float32 in, numpy float32 out; a tensor in, tensors out
    (on its device). As in pytorch-grad-cam, NaN activations count as 0.
    """
    _check_n_components(n_components)
    is_numpy = not torch.is_tensor(activations)
    acts = torch.from_numpy(np.asarray(activations)) if is_numpy else activations
    if acts.ndim != 4:
        raise ValueError(f"activations must be a batch of feature maps (B, C, h, w), got shape {tuple(acts.shape)}")
    if not acts.is_floating_point():
        acts = acts.float()
    concepts, explanations = _factorize(acts.detach(), int(n_components))
    if is_numpy:
        return concepts.float().cpu().numpy(), explanations.float().cpu().numpy()
    return concepts, explanations


def _factorize(acts: torch.Tensor, n_components: int) -> Tuple[torch.Tensor, torch.Tensor]:
    if acts.dtype not in (torch.float32, torch.float64):
        acts = acts.float()
    b, c, h, w = acts.shape
    matrix = torch.nan_to_num(acts, nan=0.0).transpose(0, 1).reshape(c, b * h * w)
    offset = matrix.amin(dim=1, keepdim=True)
    W, H = nmf(matrix - offset, n_components)
    # W + offset, as pytorch-grad-cam returns: the embedding of concept j sits at the shifted origin.
    return W + offset, H.reshape(n_components, b, h, w).transpose(0, 1)


class _LayerReader(BaseCAM):
    """BaseCAM's layer machinery (hooks for one call, eval mode, reshape transforms, default layer)
    without a map; not registered (no ``name=``), so it is no CAM method."""

    uses_gradients = False


class DeepFeatureFactorization(PerThreadResults):
    """Deep Feature Factorization of one layer's activations (see the module docstring).

    Args:
        model: any ``nn.Module``; evaluated in eval mode during a call and restored after, with
            forward hooks that only exist during the call.
        target_layer: the module whose output is factorised, e.g. ``model.layer4`` (``None``: the
            same default layer as the CAM methods, found on the first call).
        reshape_transform: turns a layer output that is not (B, C, h, w) into that layout, as for
            the CAM methods; ``None`` infers it for ViT/DeiT tokens and channels-last Swin outputs.
        computation_on_concepts: optional callable run on the concept embeddings (k, C), e.g. the
            model's classifier head (``model.fc``), to score each concept; its output comes back
            as a third return value.

    Calling it with a batch (B, 3, H, W) returns ``(concepts, explanations)`` or, with
    ``computation_on_concepts``, ``(concepts, explanations, concept_scores)``:
    concepts (C, k) float32, explanations (B, k, H, W) float32 in [0, 1] (each image's concept
    heatmaps at input resolution), concept_scores (k, ...) as the computation returns them, all
    numpy arrays.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: Optional[nn.Module],
        reshape_transform: Optional[Callable[..., torch.Tensor]] = None,
        computation_on_concepts: Optional[Callable[[torch.Tensor], Any]] = None,
    ) -> None:
        if target_layer is not None and not isinstance(target_layer, nn.Module):
            raise TypeError(
                f"target_layer must be one nn.Module (e.g. model.layer4), got {type(target_layer).__name__}"
            )
        if computation_on_concepts is not None and not callable(computation_on_concepts):
            raise TypeError(
                "computation_on_concepts must be callable on a (concepts, channels) tensor, e.g. the "
                f"classifier head model.fc; got {type(computation_on_concepts).__name__}"
            )
        self._reader = _LayerReader(model, None if target_layer is None else [target_layer], reshape_transform)
        self.model = model
        self.target_layer = target_layer
        self.reshape_transform = reshape_transform
        self.computation_on_concepts = computation_on_concepts
        # The activations factorised by this thread's last call (grad-cam's dff.activations_and_grads).
        self._init_per_thread_results()

    @property
    def activations_and_grads(self) -> ActivationsAndGradients:
        """This thread's last call as a grad-cam ``ActivationsAndGradients``: ``.activations`` holds the
        factorised (B, C, h, w) activations (after the reshape transform, detached, on the CPU);
        ``.gradients`` is empty (DFF runs no backward pass). A record only: no hooks are left on
        the model."""
        layers = self._reader.layers
        record = ActivationsAndGradients(self.model, layers, self.reshape_transform)
        activations = getattr(self._last, "activations", None)
        if activations is not None:
            record.activations.append(record.keep(activations))
        return record

    @property
    def inferred(self):
        """What was inferred on the first call (default layer, reshape transform), as on the CAMs."""
        return self._reader.inferred

    def __call__(self, input_tensor: torch.Tensor, n_components: int = 16) -> Tuple[np.ndarray, ...]:
        _check_n_components(n_components)
        if torch.is_tensor(input_tensor) and input_tensor.ndim != 4:
            hint = " Add the batch dimension with x.unsqueeze(0)." if input_tensor.ndim == 3 else ""
            raise ValueError(
                "DeepFeatureFactorization expects a batch of images (B, C, H, W); got a "
                f"{input_tensor.ndim}-D tensor of shape {tuple(input_tensor.shape)}.{hint}"
            )
        concepts, explanations = self.factorize(input_tensor, int(n_components))
        out = (concepts.float().cpu().numpy(), explanations.cpu().numpy())
        if self.computation_on_concepts is None:
            return out
        return (*out, self._concept_scores(concepts))

    def factorize(self, input_tensor: torch.Tensor, n_components: int = 16) -> Tuple[torch.Tensor, torch.Tensor]:
        """The factorisation as tensors on the model's device: concepts (C, k) and explanations
        (B, k, H, W) float32 in [0, 1] at input resolution."""
        reader = self._reader
        x = reader._check_input(input_tensor)
        reader.ensure_layers(x)
        with reader._eval_mode(), torch.no_grad(), reader._capture(need_grads=False) as store:
            reader.model(x)
        if 0 not in store:
            raise RuntimeError(
                f"target layer {reader._layer_name(0)} was never reached by the model's forward pass; "
                "pick a module that the forward actually calls (print(model) lists them)"
            )
        call = CallState(input_tensor=x, outputs=None, targets=[], raw_activations={0: store[0].detach()})
        acts = reader.layer_context(call, 0).activations  # (B, C, h, w), reshaped and checked finite
        if acts.ndim != 4:
            raise ValueError(
                f"target layer {reader._layer_name(0)} produced activations of shape {tuple(acts.shape)}; "
                "DeepFeatureFactorization needs 2-D feature maps (B, C, h, w)"
            )
        self._last.activations = acts.detach()
        concepts, maps = _factorize(acts, n_components)
        b, k, h, w = maps.shape
        maps = min_max_scale(maps.float().reshape(b * k, h, w))
        maps = resize_maps(maps, x.shape[2:]).reshape(b, k, *x.shape[2:])
        return concepts, maps

    def _concept_scores(self, concepts: torch.Tensor) -> np.ndarray:
        fn = self.computation_on_concepts
        is_module = isinstance(fn, nn.Module)
        device = model_device(fn) if is_module else concepts.device
        embeddings = concepts.float().T.contiguous().to(device)  # (k, C): one concept per row
        # A classifier head scores the concepts in eval mode (no dropout), its flags restored after.
        modes = [(m, m.training) for m in fn.modules()] if is_module else []
        try:
            if is_module:
                fn.eval()
            with torch.no_grad():
                scores = fn(embeddings)
        finally:
            for m, training in modes:
                m.training = training
        if not torch.is_tensor(scores) and hasattr(scores, "logits"):
            scores = scores.logits
        if not torch.is_tensor(scores):
            raise TypeError(
                f"computation_on_concepts returned {type(scores).__name__}; it must return a tensor "
                "(e.g. the logits of a classifier head)"
            )
        return scores.detach().cpu().numpy()

    def release(self) -> None:
        """Kept for API compatibility: hooks only exist during a call, so there is nothing left."""

    def __enter__(self) -> DeepFeatureFactorization:
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> None:
        # Never return True: an exception raised inside ``with`` always propagates.
        self.release()


def _labels_of(model: nn.Module, labels: Optional[Union[Mapping[int, str], Sequence[str]]]):
    if labels is not None:
        return labels
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None)
    if id2label:
        return id2label
    return _IndexLabels()


class _IndexLabels:
    """Category names for a model that has none (no Hugging Face ``config.id2label``): the index."""

    def __getitem__(self, index: int) -> str:
        return f"class {index}"


def _as_rgb_uint8(img: Any) -> np.ndarray:
    if hasattr(img, "convert") and hasattr(img, "mode"):  # a PIL image
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"img_pil must be an RGB image (a PIL image or an (H, W, 3) array), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.min() >= 0 and arr.max() <= 1:
        return np.uint8(np.round(arr * 255))
    raise ValueError("img_pil must be a PIL image, a uint8 array, or a float array in [0, 1]")


def run_dff_on_image(
    model: nn.Module,
    target_layer: Optional[nn.Module],
    classifier: Callable[[torch.Tensor], Any],
    img_pil: Any,
    img_tensor: torch.Tensor,
    reshape_transform: Optional[Callable[..., torch.Tensor]] = None,
    n_components: int = 5,
    top_k: int = 2,
    labels: Optional[Union[Mapping[int, str], Sequence[str]]] = None,
) -> np.ndarray:
    """DFF of one image, pictured: the image, its concepts painted over it, and a legend.

    Args:
        model, target_layer, reshape_transform: as for ``DeepFeatureFactorization``.
        classifier: the head that scores a concept embedding (k, C) -> (k, categories), e.g.
            ``model.fc``; the legend lists each concept's ``top_k`` softmax scores.
        img_pil: the image shown (PIL image, uint8 (H, W, 3) array, or floats in [0, 1]).
        img_tensor: the same image preprocessed for the model, (3, H, W) (or (1, 3, H, W)).
        labels: category names (dict or list); default ``model.config.id2label`` (Hugging Face
            models), else "class <index>".

    Returns:
        uint8 RGB (H, 3W, 3): the image, the painted concepts (30 % image), the legend. The
        legend needs matplotlib.
    """
    if (
        not torch.is_tensor(img_tensor)
        or img_tensor.ndim not in (3, 4)
        or (img_tensor.ndim == 4 and img_tensor.shape[0] != 1)
    ):
        shape = tuple(img_tensor.shape) if torch.is_tensor(img_tensor) else type(img_tensor).__name__
        raise ValueError(f"img_tensor must be one preprocessed image (3, H, W) or (1, 3, H, W), got {shape}")
    rgb = _as_rgb_uint8(img_pil)
    x = img_tensor if img_tensor.ndim == 4 else img_tensor[None]
    factorization = DeepFeatureFactorization(
        model=model, target_layer=target_layer, reshape_transform=reshape_transform, computation_on_concepts=classifier
    )
    _, explanations, scores = factorization(x, n_components)
    probabilities = torch.softmax(torch.from_numpy(np.asarray(scores, dtype=np.float32)), dim=-1).numpy()
    legend = create_labels_legend(probabilities, labels=_labels_of(model, labels), top_k=top_k)
    picture = show_factorization_on_image(rgb / 255, explanations[0], image_weight=0.3, concept_labels=legend)
    return np.hstack((rgb, picture))
