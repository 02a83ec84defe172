"""IS-CAM: Integrated Score-CAM.

Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations", 2020.
https://arxiv.org/abs/2010.03023

Score-CAM whose channel scores are averaged along a path of growing masks. As in torchcam's
implementation of the paper's algorithm, the mask accumulates ``i/n`` of M_c at step i (so the
coefficient reaches (n + 1)/2, not 1 as a plain path integral from 0 to M_c would):

    k_i = sum_{j=1..i} j / n = i (i + 1) / (2 n),      i = 1..n
    s_c = (1/n) sum_i y(X ⊙ k_i M_c)
    w   = softmax_c(s),     L = ReLU(sum_c w_c A_c)

M_c is Score-CAM's normalised, upsampled channel. The default ``num_samples=10`` follows
torchcam. Scoring is batched and chunked like Score-CAM's and supports CSKIP. Deterministic.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from pytorch_cam.perturbation import DEFAULT_BATCH_SIZE
from pytorch_cam.score_cam import ScoreCAM
from pytorch_cam.sscam import LazyVariants, check_num_samples


class ISCAM(ScoreCAM, name="iscam"):
    def __init__(
        self,
        model: nn.Module,
        target_layers,
        reshape_transform=None,
        batch_size: Union[int, str] = DEFAULT_BATCH_SIZE,
        num_samples: int = 10,
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

    def passes_per_channel(self) -> int:
        return self.num_samples

    def perturbed_inputs(self, inputs: torch.Tensor, masks: torch.Tensor, generator=None) -> LazyVariants:
        n = self.num_samples
        masked = inputs * masks

        def make(i: int) -> torch.Tensor:
            return masked * ((i + 1) * (i + 2) / (2 * n))

        return LazyVariants(n, make)
