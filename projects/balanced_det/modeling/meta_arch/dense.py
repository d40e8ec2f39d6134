"""What the balanced dense detectors (RetinaNet, FCOS) share: the EMA loss normaliser and the
Sampling-Free parts (optimal classification bias, class-adaptive thresholds)."""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Dict, Sequence, Tuple

import torch
from torch import Tensor

from ...ops import sigmoid_prior_bias
from ...stats import DatasetStatsPart
from ...utils.checks import check_range
from ..sampling_free import ClassScoreThresholds

__all__ = ["BalancedDenseMixin"]


class BalancedDenseMixin(DatasetStatsPart):
    """Mixed into an ``nn.Module`` dense detector with ``num_classes``.

    * ``loss_normalizer``: EMA of the positive count, ``ema <- m ema + (1 - m) max(P, 1)``
      (detectron2's), a buffer (checkpointed) updated without host sync in training mode;
    * ``prior_init``: classification bias ``-log((1 - pi) / pi)``, ``pi = (N_f / N) / C``;
    * ``class_adaptive_thresholds``: :class:`ClassScoreThresholds` replace the global
      ``test_score_thresh`` at inference.

    Subclasses set ``stats_counter_name`` and implement :meth:`count_foreground`,
    :meth:`stats_key_settings` and :meth:`classification_bias`.
    """

    stats_counter_name = "dense"

    def _init_dense_options(self, *, loss_normalizer_init: float,
                            loss_normalizer_momentum: float, prior_init: bool,
                            class_adaptive_thresholds: bool, test_score_thresh: float) -> None:
        check_range("loss_normalizer_init", loss_normalizer_init, 0.0, low_open=True)
        self.loss_normalizer_momentum = check_range(
            "loss_normalizer_momentum", loss_normalizer_momentum, 0.0, 1.0, high_open=True)
        self.register_buffer("loss_normalizer", torch.tensor(float(loss_normalizer_init)))
        self.prior_init = bool(prior_init)
        self.class_score_thresholds = (
            ClassScoreThresholds(self.num_classes, test_score_thresh)
            if class_adaptive_thresholds else None)

    def update_loss_normalizer(self, num_pos: Tensor) -> Tensor:
        """The EMA after this batch's positive count (unchanged in eval mode)."""
        if self.training:
            m = self.loss_normalizer_momentum
            new = self.loss_normalizer * m + num_pos.clamp(min=1).float() * (1 - m)
            self.loss_normalizer.copy_(new.detach())
        return self.loss_normalizer

    def per_class_score_thresholds(self, like: Tensor, global_thresh: float) -> Tensor:
        """(C,) thresholds: the class-adaptive ones when enabled, else ``global_thresh``."""
        if self.class_score_thresholds is not None:
            return self.class_score_thresholds.values.to(device=like.device, dtype=like.dtype)
        return like.new_full((self.num_classes,), global_thresh)

    # DatasetStatsPart -----------------------------------------------------------------------
    def dataset_stats_parts(self) -> Dict[str, DatasetStatsPart]:
        return {self.stats_counter_name: self}

    @property
    def needs_dataset_stats(self) -> bool:
        return self.prior_init or self.class_score_thresholds is not None

    def dataset_stats_counter(self):
        return self.count_foreground

    def dataset_stats_key(self) -> Dict[str, Any]:
        return self.stats_key_settings()

    @torch.no_grad()
    def apply_dataset_stats(self, fg_fraction: float, class_counts: Sequence[int]) -> None:
        if self.prior_init:
            self.classification_bias().fill_(sigmoid_prior_bias(fg_fraction, self.num_classes))
        if self.class_score_thresholds is not None:
            self.class_score_thresholds.set_from_stats(fg_fraction, class_counts)

    @abstractmethod
    def count_foreground(self, image_size: Tuple[int, int], gt_boxes: Tensor,
                         gt_classes: Tensor) -> Tuple[int, int]:
        """(N_f, N) of one training image with the detector's own assignment rule."""

    @abstractmethod
    def stats_key_settings(self) -> Dict[str, Any]:
        """The assignment settings the counts depend on (part of the statistics cache key)."""

    @abstractmethod
    def classification_bias(self) -> Tensor:
        """The bias tensor of the classification conv (set by ``prior_init``)."""
