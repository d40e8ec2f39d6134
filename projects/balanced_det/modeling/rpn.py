"""RPN with a sampler plug-in (detectron2's random sampling or Sampling-Free's none), the
guided loss and the optimal objectness bias.

:class:`BalancedRPN` subclasses detectron2's ``RPN`` and overrides only
``_subsample_labels`` (which anchors train) and ``losses`` (normaliser, guided loss); it is a
:class:`~balanced_det.stats.DatasetStatsPart` for the objectness bias.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN

from ..ops import sigmoid_prior_bias
from ..stats import DatasetStatsPart, anchor_generator_key, anchor_stats_counter, matcher_key
from ..utils.checks import check_choice, check_plugin
from ..utils.events import put_tensor_scalars
from ..utils.signature import with_base_signature
from ..utils.tensor_math import float32_math
from .losses import GuidedLoss, SigmoidBCELoss
from .samplers import SampleCandidates, Sampler, resolve_sampler

__all__ = ["BalancedRPN"]

RPN_NORMALIZERS = ("sampled", "positives")


@PROPOSAL_GENERATOR_REGISTRY.register()
@with_base_signature
class BalancedRPN(RPN, DatasetStatsPart):
    """detectron2's ``RPN`` with plug-ins; with the defaults exactly detectron2's.

    Args (in addition to ``RPN``'s):
        sampler: a sampler that needs only the anchor labels: ``RandomSampler`` (``None``,
            detectron2's ``batch_size_per_image`` / ``positive_fraction``) or ``AllSampler``
            (Sampling-Free: every anchor with label >= 0 trains).
        loss_normalizer: ``"sampled"`` (detectron2: both losses / (batch_size_per_image x
            images)) or ``"positives"`` (Sampling-Free: ``loss_rpn_cls`` = sum of BCE over
            valid anchors / max(#positives, 1), ``loss_rpn_loc`` = / max(4 #positives, 1)).
        guided_loss: a :class:`~balanced_det.modeling.losses.GuidedLoss` (RPN: w_cls 1).
        prior_init: objectness bias ``-log((1 - pi) / pi)``, ``pi = N_f / N`` of the anchors
            under ``anchor_matcher``, from the dataset statistics.
    """

    @configurable
    def __init__(self, *, sampler: Optional[Sampler] = None, loss_normalizer: str = "sampled",
                 guided_loss: Optional[GuidedLoss] = None, prior_init: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.sampler = resolve_sampler(sampler)
        if self.sampler.needs_box_head or self.sampler.needs_matches:
            raise ValueError(f"sampler={self.sampler!r} is not valid for the RPN; expected a "
                             "sampler of anchor labels only (RandomSampler, AllSampler)")
        self.loss_normalizer = check_choice("loss_normalizer", loss_normalizer, RPN_NORMALIZERS)
        self.guided_loss = check_plugin("guided_loss", guided_loss, GuidedLoss)
        self.prior_init = bool(prior_init)
        self.bce = SigmoidBCELoss()

    def _subsample_labels(self, label):
        """Labels (1 fg, 0 bg, -1 ignored) with the anchors the sampler leaves out set to -1."""
        classes = torch.where(label == 1, torch.zeros_like(label),
                              torch.where(label == 0, torch.ones_like(label), label))
        candidates = SampleCandidates(
            labels=[classes], matched_gt=[], ious=[], boxes=[], num_classes=1,
            num_per_image=self.batch_size_per_image, positive_fraction=self.positive_fraction)
        (idx, _), = self.sampler(candidates)
        out = torch.full_like(label, -1)
        out[idx] = label[idx]
        return out

    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        if self.loss_normalizer == "sampled":
            losses = super().losses(anchors, pred_objectness_logits, gt_labels,
                                    pred_anchor_deltas, gt_boxes)
            if self.guided_loss is not None:
                w = self.loss_weight.get("loss_rpn_cls", 1.0)
                raw_cls = losses["loss_rpn_cls"] / w if w else losses["loss_rpn_cls"]
                self._guide(losses, raw_cls.float(), torch.stack(gt_labels).eq(1).any())
            return losses

        logits = cat(pred_objectness_logits, dim=1)
        with float32_math(logits):
            labels = torch.stack(gt_labels)  # (N, R)
            num_images = labels.shape[0]
            pos = labels == 1
            num_pos = pos.sum()
            loss_cls = self.bce(logits.float(), pos.float(), weights=(labels >= 0).float(),
                                normalizer=num_pos.float().clamp(min=1.0))
            loc = _dense_box_regression_loss(
                anchors, self.box2box_transform, [d.float() for d in pred_anchor_deltas],
                [b.float() for b in gt_boxes], pos, box_reg_loss_type=self.box_reg_loss_type,
                smooth_l1_beta=self.smooth_l1_beta)
            box_dim = pred_anchor_deltas[0].shape[-1]
            loss_loc = loc / (num_pos * box_dim).clamp(min=1).float()
            put_tensor_scalars(**{
                "rpn/num_pos_anchors": num_pos.float() / num_images,
                "rpn/num_neg_anchors": (labels == 0).sum().float() / num_images,
            })
            losses = {"loss_rpn_cls": loss_cls, "loss_rpn_loc": loss_loc}
            losses = {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}
            if self.guided_loss is not None:
                self._guide(losses, loss_cls, num_pos > 0)
        return losses

    def _guide(self, losses, raw_cls, has_fg) -> None:
        """``loss_rpn_cls = loss_weight * w_cls r L_cls`` against the weighted box loss."""
        losses["loss_rpn_loc"] = self.guided_loss.regression(losses["loss_rpn_loc"])
        cls, r = self.guided_loss.classification(raw_cls, losses["loss_rpn_loc"], has_fg)
        losses["loss_rpn_cls"] = cls * self.loss_weight.get("loss_rpn_cls", 1.0)
        put_tensor_scalars(**{"rpn/guided_ratio": r})

    # ---- DatasetStatsPart -------------------------------------------------------------------
    @property
    def needs_dataset_stats(self) -> bool:
        return self.prior_init

    def dataset_stats_counter(self):
        """N_f / N of the anchors under ``anchor_matcher`` (as ``label_and_sample_anchors``
        labels them with detectron2's default ``anchor_boundary_thresh`` < 0)."""
        return anchor_stats_counter(self.anchor_generator, self.anchor_matcher)

    def dataset_stats_key(self) -> Dict[str, Any]:
        return {"anchors": anchor_generator_key(self.anchor_generator),
                "matcher": matcher_key(self.anchor_matcher)}

    @torch.no_grad()
    def apply_dataset_stats(self, fg_fraction: float, class_counts: Sequence[int]) -> None:
        if not self.prior_init:
            return
        conv = getattr(self.rpn_head, "objectness_logits", None)
        if conv is None or getattr(conv, "bias", None) is None:
            raise ValueError(f"prior_init: {type(self.rpn_head).__name__} has no "
                             "'objectness_logits' layer with a bias to initialise")
        conv.bias.fill_(sigmoid_prior_bias(fg_fraction, 1))
