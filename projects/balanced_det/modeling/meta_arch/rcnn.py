"""Generalized R-CNN that initialises its Sampling-Free parts from dataset statistics."""
from __future__ import annotations

from typing import Any, Dict

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from ...stats import DatasetStatsUser
from ..rpn import anchor_generator_key

__all__ = ["BalancedRCNN"]


@META_ARCH_REGISTRY.register()
class BalancedRCNN(GeneralizedRCNN, DatasetStatsUser):
    """detectron2's ``GeneralizedRCNN`` (same constructor, same forward) that implements
    :class:`balanced_det.stats.DatasetStatsUser` for its parts that need statistics:

    * ``"rpn"``: a :class:`~balanced_det.modeling.rpn.BalancedRPN` with ``prior_init``: N_f / N
      of the anchors under the RPN's ``anchor_matcher`` -> sigmoid objectness bias.
    * ``"roi_heads"``: a :class:`~balanced_det.modeling.roi_heads.BalancedROIHeads` whose
      predictor has ``prior_init`` or ``class_adaptive_thresholds``: N_f / N of the initial
      proposals under the head's ``proposal_matcher`` (read from the RPN's anchors and
      training post-NMS top-k, see ``BalancedROIHeads.dataset_stats_counter``) -> softmax
      background bias and, with the class counts N_j, per-class score thresholds.

    Both counters share one anchor cache per image size. A model with neither part needing
    statistics returns ``{}`` counters (``prepare_model_with_dataset_stats`` then skips it).
    """

    def _stats_parts(self):
        rpn = self.proposal_generator
        roi = self.roi_heads
        use_rpn = bool(getattr(rpn, "needs_dataset_stats", False))
        use_roi = bool(getattr(roi, "needs_dataset_stats", False))
        if use_roi and (rpn is None or not hasattr(rpn, "anchor_generator")):
            raise ValueError(
                "the ROI head's Sampling-Free statistics read the initial proposals from an "
                "anchor-based RPN; this model has no such proposal generator")
        return rpn, roi, use_rpn, use_roi

    def _num_initial_proposals(self) -> int:
        return int(self.proposal_generator.post_nms_topk[True])

    def dataset_stats_counters(self) -> Dict[str, Any]:
        rpn, roi, use_rpn, use_roi = self._stats_parts()
        counters = {}
        if not (use_rpn or use_roi):
            return counters
        anchors_fn = _anchors_fn(rpn)
        if use_rpn:
            counters["rpn"] = rpn.dataset_stats_counter(anchors_fn)
        if use_roi:
            counters["roi_heads"] = roi.dataset_stats_counter(anchors_fn,
                                                              self._num_initial_proposals())
        return counters

    def dataset_stats_key(self) -> Dict[str, Any]:
        rpn, roi, use_rpn, use_roi = self._stats_parts()
        key: Dict[str, Any] = {}
        if use_rpn:
            key["rpn"] = rpn.dataset_stats_key()
        if use_roi:
            key["roi_heads"] = roi.dataset_stats_key(anchor_generator_key(rpn.anchor_generator),
                                                     self._num_initial_proposals())
        return key

    def apply_dataset_stats(self, stats) -> None:
        rpn, roi, use_rpn, use_roi = self._stats_parts()
        if use_rpn:
            rpn.apply_dataset_stats(stats["rpn"].fg_fraction)
        if use_roi:
            roi.apply_dataset_stats(stats["roi_heads"].fg_fraction, stats.class_counts)


def _anchors_fn(rpn):
    if hasattr(rpn, "anchors_fn"):
        return rpn.anchors_fn()
    from ..rpn import BalancedRPN

    return BalancedRPN.anchors_fn(rpn)  # any detectron2 RPN with an anchor generator
