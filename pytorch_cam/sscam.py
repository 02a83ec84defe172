"""SS-CAM: Smoothed Score-CAM.

Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization", 2020.
https://arxiv.org/abs/2006.14255

Score-CAM whose channel scores are averaged over ``n`` noisy copies of each mask M_c
(the normalised, upsampled channel A_c, as in Score-CAM):

    s_c = (1/n) sum_i y(X ⊙ (M_c + delta_i)),     delta_i ~ N(0, std^2) per pixel
    w   = softmax_c(s),     L = ReLU(sum_c w_c A_c)

Defaults (``num_samples=35``, ``std=2.0``) follow torchcam. Scoring is batched and chunked like
Score-CAM's and supports CSKIP. The noise comes from a ``torch.Generator`` seeded with ``seed``
at each layer's scoring, so with a seed a call is deterministic. The noise is drawn chunk by
chunk, so it depends on the chunk size: with a ``seed``, ``batch_size="auto"`` does not time
chunk sizes but uses ``SEEDED_CHUNK`` (32), so seeded runs repeat exactly.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Union

import torch
from torch import nn

from pytorch_cam.perturbation import DEFAULT_BATCH_SIZE
from pytorch_cam.score_cam import ScoreCAM


class LazyVariants:
    """``count`` perturbed inputs made one at a time, in order, when iterated (bounded memory)."""

    def __init__(self, count: int, make: Callable[[int], torch.Tensor]) -> None:
        self.count = count
        self.make = make

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.make(i) for i in range(self.count))


def check_num_samples(num_samples: int) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    return num_samples


#: chunk size of a seeded SS-CAM with batch_size="auto" (timing would make the noise depend on the clock)
SEEDED_CHUNK = 32


class SSCAM(ScoreCAM, name="sscam"):
    def __init__(
        self,
        model: nn.Module,
        target_layers,
        reshape_transform=None,
        batch_size: Union[int, str] = DEFAULT_BATCH_SIZE,
        num_samples: int = 35,
        std: float = 2.0,
        seed: Optional[int] = None,
        cskip: Union[int, float, None] = None,
        cskip_rank: str = "max",
        progress: bool = True,
        device=None,
        **kwargs,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform=reshape_transform,
            batch_size=batch_size,
            cskip=cskip,
            cskip_rank=cskip_rank,
            progress=progress,
            device=device,
            **kwargs,
        )
        self.num_samples = check_num_samples(num_samples)
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std!r}")
        self.std = float(std)
        self.seed = seed

    def fixed_chunk_size(self) -> Optional[int]:
        fixed = super().fixed_chunk_size()
        return SEEDED_CHUNK if fixed is None and self.seed is not None else fixed

    def noise_generator(self, device: torch.device) -> torch.Generator:
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(self.seed))
        return generator

    def passes_per_channel(self) -> int:
        return self.num_samples

    def perturbed_inputs(
        self, inputs: torch.Tensor, masks: torch.Tensor, generator: Optional[torch.Generator]
    ) -> LazyVariants:
        def make(_: int) -> torch.Tensor:
            noise = torch.randn(masks.shape, generator=generator, device=masks.device, dtype=masks.dtype)
            return inputs * (masks + self.std * noise)

        return LazyVariants(self.num_samples, make)
