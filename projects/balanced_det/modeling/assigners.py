"""Sample-level plug-ins of the anchor-based dense host: anchor assigners.

An assigner replaces the host's IoU matcher in training: from the anchors, the GTs and the
(detached) predictions it gives every anchor a label, a GT box, soft classification targets
and a per-anchor loss weight. ``BalancedRetinaNet(anchor_assigner=None)`` keeps detectron2's
matcher. Method pages: docs/methods/.
"""
from __future__ import annotations

import dataclasses
from abc import ABCMeta, abstractmethod
from typing import List, Optional

import torch
from torch import Tensor, nn

from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances, pairwise_iou

from ..ops import aligned_iou, noisy_anchor_soft_targets, topn_candidates
from ..utils.checks import check_int, check_range
from ..utils.events import put_tensor_scalars
from ..utils.tensor_math import float32_math

__all__ = ["AnchorAssignment", "AnchorAssigner", "NoisyAnchorAssigner"]


@dataclasses.dataclass
class AnchorAssignment:
    """Training targets of a batch of N images with R anchors each.

    Attributes:
        labels: (N, R) int64 in {-1, 0..C-1, C}: ignored, class, background.
        gt_boxes: (N, R, 4) the GT box of every anchor (meaningful on the positives).
        matched_gt_idxs: (N, R) int64 index of that GT in its image.
        soft_targets: (N, R) float32 target of each positive's class (None: 1).
        weights: (N, R) float32 re-weighting factor of each anchor's losses, rescaled by the
            host so that each loss keeps its sum (None: no re-weighting).
    """

    labels: Tensor
    gt_boxes: Tensor
    matched_gt_idxs: Tensor
    soft_targets: Optional[Tensor] = None
    weights: Optional[Tensor] = None


class AnchorAssigner(nn.Module, metaclass=ABCMeta):
    """Assigns training targets to the anchors of a dense detector (no gradient)."""

    @abstractmethod
    def assign(self, anchors: Tensor, gt_instances: List[Instances], logits: Tensor,
               deltas: Tensor, box2box_transform: Box2BoxTransform,
               num_classes: int) -> AnchorAssignment:
        """Args: anchors (R, 4) XYXY; per-image GTs; logits (N, R, C) and deltas (N, R, 4),
        detached; the host's box transform and class count."""

    def forward(self, anchors, gt_instances, logits, deltas, box2box_transform, num_classes):
        with torch.no_grad(), float32_math(logits):
            return self.assign(anchors.float(), gt_instances, logits.detach().float(),
                               deltas.detach().float(), box2box_transform, num_classes)


class NoisyAnchorAssigner(AnchorAssigner):
    """Learning from Noisy Anchors (Li et al., CVPR 2020): the ``topk`` anchors of highest IoU
    of every GT are the candidates (positives; no IoU threshold, no ignored anchors), labelled
    with the class of their highest-IoU GT. Their cleanliness mixes ``loc`` (IoU of the
    regressed box with that GT) and ``cls`` (predicted probability of its class)::

        t_a = mean(loc) + (s_a - min s)(1 - mean(loc)) / (max s - min s),
        s_a = alpha loc_a / mean(loc) + (1 - alpha) cls_a / mean(cls)
        r_a = alpha f(loc_a) / mean(f(loc)) + (1 - alpha) f(cls_a) / mean(f(cls)),
        f(x) = 1 / (1 - x)

    (statistics per image over the candidate list), soft targets ``t`` and loss weights
    ``r`` (1 off the candidates). Defaults: the authors' ``topk=30``, ``alpha=0.75``. See
    docs/methods/noisy_anchor.md.
    """

    def __init__(self, topk: int = 30, alpha: float = 0.75):
        super().__init__()
        self.topk = check_int("topk", topk, 1)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)

    def extra_repr(self) -> str:
        return f"topk={self.topk}, alpha={self.alpha}"

    def assign(self, anchors, gt_instances, logits, deltas, box2box_transform, num_classes):
        labels, boxes, matched, loc, cls, counts = [], [], [], [], [], []
        for i, gt in enumerate(gt_instances):
            count, m = topn_candidates(pairwise_iou(gt.gt_boxes, Boxes(anchors)), self.topk)
            if len(gt) > 0:
                gt_boxes = gt.gt_boxes.tensor.float()[m]
                gt_classes = gt.gt_classes[m]
            else:
                gt_boxes = torch.zeros_like(anchors)
                gt_classes = torch.zeros_like(m)
            pred = box2box_transform.apply_deltas(deltas[i], anchors)
            labels.append(torch.where(count > 0, gt_classes,
                                      torch.full_like(gt_classes, num_classes)))
            boxes.append(gt_boxes)
            matched.append(m)
            loc.append(aligned_iou(pred, gt_boxes))
            cls.append(logits[i].gather(1, gt_classes[:, None]).squeeze(1).sigmoid())
            counts.append(count)
        counts = torch.stack(counts)
        targets, weights = noisy_anchor_soft_targets(torch.stack(loc), torch.stack(cls), counts,
                                                     self.alpha)
        cand = counts > 0
        put_tensor_scalars(noisy_anchor_target_mean=targets.sum() / cand.sum().clamp(min=1),
                           noisy_anchor_weight_max=weights.max())
        return AnchorAssignment(torch.stack(labels), torch.stack(boxes), torch.stack(matched),
                                targets, weights)
