"""Generalized R-CNN that initialises its Sampling-Free parts from dataset statistics."""
from __future__ import annotations

from typing import Any, Dict, Sequence, Union

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from ...stats import (
    AnchorCache,
    ClassFrequencyPart,
    DatasetStatsPart,
    anchor_generator_key,
    count_matched_anchors,
    matcher_key,
)

__all__ = ["BalancedRCNN", "InitialProposalStats"]


@META_ARCH_REGISTRY.register()
class BalancedRCNN(GeneralizedRCNN):
    """detectron2's ``GeneralizedRCNN`` (same constructor, same forward) whose parts that use
    dataset statistics (:class:`~balanced_det.stats.DatasetStatsPart`) are listed by
    :meth:`dataset_stats_parts`: ``"rpn"`` (a ``BalancedRPN`` with ``prior_init``) and
    ``"roi_heads"`` (a ``BalancedROIHeads`` whose predictor uses them, counted by
    :class:`InitialProposalStats` from the RPN's anchors) and ``"class_frequencies"`` (a box
    predictor that is a :class:`~balanced_det.stats.ClassFrequencyPart`, Equalization Loss)."""

    def dataset_stats_parts(self) -> Dict[str, Union[DatasetStatsPart, ClassFrequencyPart]]:
        parts: Dict[str, Union[DatasetStatsPart, ClassFrequencyPart]] = {}
        rpn, roi = self.proposal_generator, self.roi_heads
        if isinstance(rpn, DatasetStatsPart):
            parts["rpn"] = rpn
        predictor = getattr(roi, "box_predictor", None)
        if isinstance(predictor, ClassFrequencyPart):
            parts["class_frequencies"] = predictor
        if getattr(roi, "needs_dataset_stats", False):
            if rpn is None or not hasattr(rpn, "anchor_generator"):
                raise ValueError(
                    "the ROI head's Sampling-Free statistics read the initial proposals from an "
                    "anchor-based RPN; this model has no such proposal generator")
            parts["roi_heads"] = InitialProposalStats(roi, rpn)
        return parts


class InitialProposalStats(DatasetStatsPart):
    """N_f / N of a ROI head's samples at the start of training (our reading; the paper gives
    none for the ROI head): the proposals of the untrained RPN are about a random subset of
    its anchors, plus the GT boxes detectron2 appends. Per image, with A anchors of which
    ``A_f`` are foreground and ``A_v`` not ignored under the head's ``proposal_matcher``,
    ``K = min(post_nms_topk[train], A)`` and G appended GTs::

        N_f = round(K A_f / A) + G,     N = round(K A_v / A) + G
    """

    def __init__(self, roi_heads, rpn):
        self.roi_heads = roi_heads
        self.rpn = rpn
        self.num_proposals = int(rpn.post_nms_topk[True])

    @property
    def needs_dataset_stats(self) -> bool:
        return True

    def dataset_stats_counter(self):
        matcher = self.roi_heads.proposal_matcher
        append = bool(self.roi_heads.proposal_append_gt)
        anchors_of = AnchorCache(self.rpn.anchor_generator)
        num_proposals = self.num_proposals

        def counter(image_size, gt_boxes, gt_classes):
            anchors = anchors_of(image_size)
            a = len(anchors)
            k = min(num_proposals, a)
            fg, valid = count_matched_anchors(anchors, matcher, gt_boxes)
            extra = int(gt_boxes.shape[0]) if append else 0
            if a == 0:
                return extra, extra
            return int(round(k * fg / a)) + extra, int(round(k * valid / a)) + extra

        return counter

    def dataset_stats_key(self) -> Dict[str, Any]:
        return {
            "reading": "roi_heads: anchors as initial proposals (v1)",
            "anchors": anchor_generator_key(self.rpn.anchor_generator),
            "num_proposals": self.num_proposals,
            "proposal_append_gt": bool(self.roi_heads.proposal_append_gt),
            "matcher": matcher_key(self.roi_heads.proposal_matcher),
        }

    def apply_dataset_stats(self, fg_fraction: float, class_counts: Sequence[int]) -> None:
        self.roi_heads.apply_dataset_stats(fg_fraction, class_counts)
