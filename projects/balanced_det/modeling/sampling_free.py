"""Sampling-Free parts shared by the heads: class-adaptive score thresholds.

The optimal bias initialisation and the thresholds come from dataset statistics
(:mod:`balanced_det.stats`); see docs/methods/sampling_free.md.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..ops import class_adaptive_thresholds

__all__ = ["ClassScoreThresholds"]


class ClassScoreThresholds(nn.Module):
    """Per-class inference score thresholds ``theta_j = (N_f / N) N_j / sum_k N_k``, a buffer
    ``values`` (C,) saved with checkpoints; ``initial`` (the global threshold) until set."""

    def __init__(self, num_classes: int, initial: float):
        super().__init__()
        self.register_buffer("values", torch.full((int(num_classes),), float(initial)))

    @torch.no_grad()
    def set_from_stats(self, fg_fraction: float, class_counts: Sequence[int]) -> Tensor:
        counts = list(class_counts)
        if len(counts) != self.values.numel():
            raise ValueError(f"class_counts has {len(counts)} entries; expected one per class "
                             f"({self.values.numel()})")
        self.values.copy_(class_adaptive_thresholds(fg_fraction, counts).to(self.values))
        return self.values
