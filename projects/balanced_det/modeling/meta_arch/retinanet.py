"""RetinaNet with balanced-learning plug-ins (PISA, GHM, Libra, Sampling-Free, FL*, Noisy
Anchors), on detectron2's ``RetinaNet``.

:class:`BalancedRetinaNet` subclasses detectron2's ``RetinaNet`` (same head, anchors, matcher,
box transform, inference) and overrides the narrowest methods: ``losses``, ``label_anchors``
(to also return the matched GT index, for ISR-P), ``inference_single_image`` /
``_decode_multi_level_predictions`` (per-class thresholds; v0.6 ignores the threshold and
top-k arguments of the latter). With the defaults its losses are detectron2's: sigmoid focal
loss over non-ignored anchors and Smooth L1 over positives, both divided by an EMA of the
positive count. The methods are plug-in objects (:mod:`balanced_det.modeling.losses`,
:mod:`balanced_det.modeling.samplers`); Balanced FPN is a neck around the backbone.
No ``.item()`` in the training step; loss maths in float32 with autocast off.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling.meta_arch.build import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou

from ...ops import (
    aligned_iou,
    encode_box_deltas,
    renormalize_to_loss,
    unique_gt_ids_from_pairs,
    usw_features,
)
from ...stats import anchor_generator_key, anchor_stats_counter, matcher_key
from ...utils.checks import check_choice, check_int, check_plugin, check_range
from ...utils.events import put_tensor_scalars
from ...utils.signature import with_base_signature
from ..assigners import AnchorAssigner
from ..losses import (
    CARL,
    BoxRegressionLoss,
    ClassificationLoss,
    ElementwiseBoxLoss,
    ElementwiseClassificationLoss,
    FocalLoss,
    GIoULoss,
    GuidedLoss,
    SmoothL1Loss,
    call_loss,
)
from ..samplers import ISRPWeighting
from ..usw import SampleWeightingNet
from .dense import BalancedDenseMixin

__all__ = ["BalancedRetinaNet"]

logger = logging.getLogger(__name__)

#: detectron2's own box losses of RetinaNet (others are ``box_reg_loss`` objects)
D2_BOX_LOSSES = ("smooth_l1", "giou")


@META_ARCH_REGISTRY.register()
@with_base_signature
class BalancedRetinaNet(BalancedDenseMixin, RetinaNet):
    """detectron2's RetinaNet with balanced-learning plug-ins (see the module docstring).

    All of detectron2's ``RetinaNet`` arguments, plus (defaults = detectron2's):

    Args:
        cls_loss: a :class:`~balanced_det.modeling.losses.ClassificationLoss` (``FocalLoss``,
            ``SigmoidBCELoss``, ``GHMCLoss``); ``None``: detectron2's focal loss
            (``focal_loss_alpha``, ``focal_loss_gamma``).
        box_reg_loss: a :class:`~balanced_det.modeling.losses.BoxRegressionLoss`
            (``SmoothL1Loss``, ``BalancedL1Loss``, ``GIoULoss``, ``GHMRLoss``); ``None``:
            detectron2's ``box_reg_loss_type`` (``"smooth_l1"`` with ``smooth_l1_beta``, or
            ``"giou"``).
        loss_normalizer_init, loss_normalizer_momentum: EMA of the positive count (100, 0.9;
            momentum 0: the batch's count, as mmdet). GHM-C/R keep their own normalisation.
        positive_weighting: an :class:`~balanced_det.modeling.samplers.ISRPWeighting` on the
            positive anchors (its weight multiplies the anchor's whole loss row); needs a
            classification loss that takes sample weights (not GHM-C).
        carl: a :class:`~balanced_det.modeling.losses.CARL` (sigmoid probability of the GT
            class, the element-wise box loss): adds ``loss_carl``.
        guided_loss: a :class:`~balanced_det.modeling.losses.GuidedLoss`.
        sample_weighting: a :class:`~balanced_det.modeling.usw.SampleWeightingNet` (USW) on
            every anchor: ``loss_cls`` and ``loss_box_reg`` weighted by ``exp(-s)``, plus
            ``loss_usw_cls``, ``loss_usw_reg`` (docs/methods/usw.md); needs element-wise losses
            and does not combine with ``positive_weighting``.
        anchor_assigner: an :class:`~balanced_det.modeling.assigners.AnchorAssigner`
            (``NoisyAnchorAssigner``) that replaces ``anchor_matcher`` in training; its soft
            targets scale the one-hot targets and its weights ``r`` re-weight every anchor's
            classification row and box loss, each rescaled to keep its sum
            (``w = r * sum(l) / sum(r l)``, detached). Needs element-wise losses (on deltas);
            not with ``positive_weighting`` or the Sampling-Free statistics. ``None``:
            detectron2's matcher.
        prior_init, class_adaptive_thresholds: Sampling-Free's dataset-statistics options
            (this model's anchors and matcher).
    """

    stats_counter_name = "retinanet_anchors"

    @configurable
    def __init__(
        self,
        *,
        cls_loss: Optional[ClassificationLoss] = None,
        box_reg_loss: Optional[BoxRegressionLoss] = None,
        loss_normalizer_init: float = 100.0,
        loss_normalizer_momentum: float = 0.9,
        positive_weighting: Optional[ISRPWeighting] = None,
        carl: Optional[CARL] = None,
        guided_loss: Optional[GuidedLoss] = None,
        sample_weighting: Optional[SampleWeightingNet] = None,
        anchor_assigner: Optional[AnchorAssigner] = None,
        prior_init: bool = False,
        class_adaptive_thresholds: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("num_classes", self.num_classes, 1)
        check_range("test_nms_thresh", self.test_nms_thresh, 0.0, 1.0)
        self.cls_loss = check_plugin(
            "cls_loss", cls_loss, ClassificationLoss,
            lambda: FocalLoss(self.focal_loss_alpha, self.focal_loss_gamma))
        if box_reg_loss is None:
            check_choice("box_reg_loss_type", self.box_reg_loss_type, D2_BOX_LOSSES)
            box_reg_loss = (SmoothL1Loss(self.smooth_l1_beta)
                            if self.box_reg_loss_type == "smooth_l1" else GIoULoss())
        self.box_reg_loss = check_plugin("box_reg_loss", box_reg_loss, BoxRegressionLoss)
        self.positive_weighting = check_plugin("positive_weighting", positive_weighting,
                                               ISRPWeighting)
        if self.positive_weighting is not None and not isinstance(
                self.cls_loss, ElementwiseClassificationLoss):
            raise ValueError(f"positive_weighting needs an element-wise classification loss "
                             f"(FocalLoss, SigmoidBCELoss); cls_loss={self.cls_loss!r} weights "
                             "its elements itself")
        self.carl = check_plugin("carl", carl, CARL)
        if self.carl is not None and (self.box_reg_loss.on_boxes or not isinstance(
                self.box_reg_loss, ElementwiseBoxLoss)):
            raise ValueError(f"carl needs an element-wise box loss on deltas; "
                             f"box_reg_loss={self.box_reg_loss!r} is not one")
        self.guided_loss = check_plugin("guided_loss", guided_loss, GuidedLoss)
        self.sample_weighting = check_plugin("sample_weighting", sample_weighting,
                                             SampleWeightingNet)
        if self.sample_weighting is not None and self.sample_weighting.mask:
            raise ValueError(f"sample_weighting={self.sample_weighting!r}: mask=True weights a "
                             "mask head's loss; RetinaNet has none (expected mask=False)")
        if self.sample_weighting is not None and (
                not isinstance(self.cls_loss, ElementwiseClassificationLoss)
                or self.box_reg_loss.on_boxes
                or not isinstance(self.box_reg_loss, ElementwiseBoxLoss)
                or self.positive_weighting is not None):
            raise ValueError(f"sample_weighting needs element-wise losses (cls_loss="
                             f"{self.cls_loss!r}, box_reg_loss={self.box_reg_loss!r}) on deltas "
                             f"and no positive_weighting ({self.positive_weighting!r})")
        self.anchor_assigner = check_plugin("anchor_assigner", anchor_assigner, AnchorAssigner)
        if self.anchor_assigner is not None:
            if not isinstance(self.cls_loss, ElementwiseClassificationLoss) or (
                    self.box_reg_loss.on_boxes
                    or not isinstance(self.box_reg_loss, ElementwiseBoxLoss)):
                raise ValueError(
                    f"anchor_assigner re-weights per-anchor losses: it needs an element-wise "
                    f"classification loss and an element-wise box loss on deltas; got "
                    f"cls_loss={self.cls_loss!r}, box_reg_loss={self.box_reg_loss!r}")
            if self.positive_weighting is not None or self.sample_weighting is not None:
                raise ValueError("anchor_assigner and positive_weighting / sample_weighting "
                                 "all weight the positives; set one of them")
            if prior_init or class_adaptive_thresholds:
                raise ValueError("prior_init and class_adaptive_thresholds count anchors with "
                                 "anchor_matcher, not with anchor_assigner; turn them off")
        self._init_dense_options(
            loss_normalizer_init=loss_normalizer_init,
            loss_normalizer_momentum=loss_normalizer_momentum, prior_init=prior_init,
            class_adaptive_thresholds=class_adaptive_thresholds,
            test_score_thresh=self.test_score_thresh)

    # ------------------------------------------------------------------ labels
    @torch.no_grad()
    def label_anchors_with_indices(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """detectron2's ``label_anchors`` plus the matched GT index of every anchor.

        Returns:
            labels (per image (R,) in {-1, 0..C-1, C}: ignored, class, background), matched GT
            boxes (per image (R, 4); anchors' own matches, zeros without GT) and matched GT
            indices (per image (R,), meaningful for positives).
        """
        anchors = Boxes.cat(anchors)
        labels, boxes, indices = [], [], []
        for gt in gt_instances:
            quality = pairwise_iou(gt.gt_boxes, anchors)
            matched_idxs, anchor_labels = self.anchor_matcher(quality)
            del quality
            if len(gt) > 0:
                matched_boxes = gt.gt_boxes.tensor[matched_idxs]
                label = gt.gt_classes[matched_idxs]
                label = torch.where(anchor_labels == 0, torch.full_like(label, self.num_classes),
                                    label)
                label = torch.where(anchor_labels == -1, torch.full_like(label, -1), label)
            else:
                matched_boxes = torch.zeros_like(anchors.tensor)
                label = torch.zeros_like(matched_idxs) + self.num_classes
            labels.append(label)
            boxes.append(matched_boxes)
            indices.append(matched_idxs)
        return labels, boxes, indices

    def label_anchors(self, anchors, gt_instances):
        labels, boxes, _ = self.label_anchors_with_indices(anchors, gt_instances)
        return labels, boxes

    # ------------------------------------------------------------------ training
    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        num_gts = [len(x) for x in gt_instances]
        if self.anchor_assigner is not None:
            a = self.anchor_assigner(Boxes.cat(anchors).tensor, gt_instances,
                                     cat(pred_logits, dim=1), cat(pred_anchor_deltas, dim=1),
                                     self.box2box_transform, self.num_classes)
            return self.losses(anchors, pred_logits, a.labels, pred_anchor_deltas, a.gt_boxes,
                               matched_gt_idxs=a.matched_gt_idxs, num_gts=num_gts,
                               soft_targets=a.soft_targets, anchor_weights=a.weights)
        gt_labels, gt_boxes, matched = self.label_anchors_with_indices(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                           matched_gt_idxs=matched, num_gts=num_gts)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
               matched_gt_idxs: Optional[List[Tensor]] = None,
               num_gts: Optional[Sequence[int]] = None,
               soft_targets: Optional[Tensor] = None,
               anchor_weights: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Same arguments as detectron2's ``RetinaNet.losses`` (plus the matched GT indices and
        per-image GT counts that ISR-P needs, and an anchor assigner's (N, R) soft targets and
        weights). Returns ``loss_cls``, ``loss_box_reg`` and, with CARL, ``loss_carl``;
        float32."""
        with torch.autocast(device_type=pred_logits[0].device.type, enabled=False):
            return self._losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                                matched_gt_idxs, num_gts, soft_targets, anchor_weights)

    def _losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                matched_gt_idxs, num_gts, soft_targets=None,
                anchor_weights=None) -> Dict[str, Tensor]:
        C = self.num_classes
        num_images = len(gt_labels)
        gt_labels = torch.stack(list(gt_labels)) if not torch.is_tensor(gt_labels) else gt_labels
        gt_boxes = (torch.stack(list(gt_boxes)) if not torch.is_tensor(gt_boxes)
                    else gt_boxes).float()
        anchors_t = type(anchors[0]).cat(anchors).tensor.float()  # R x 4
        level_sizes = [x.shape[1] for x in pred_logits]
        logits = cat(list(pred_logits), dim=1).float()  # N x R x C
        deltas = cat(list(pred_anchor_deltas), dim=1).float()  # N x R x 4

        valid = gt_labels >= 0
        pos = valid & (gt_labels != C)
        num_pos = pos.sum()
        normalizer = self.update_loss_normalizer(num_pos)
        put_tensor_scalars(num_pos_anchors=num_pos.float() / max(num_images, 1))

        targets = F.one_hot(torch.where(valid, gt_labels, torch.full_like(gt_labels, C)),
                            C + 1)[..., :C].to(logits.dtype)
        if soft_targets is not None:
            targets = targets * soft_targets.float()[..., None]
        safe_gt = torch.where(pos[..., None], gt_boxes, anchors_t.expand_as(gt_boxes))
        gt_deltas = encode_box_deltas(anchors_t.expand_as(gt_boxes), safe_gt,
                                      self.box2box_transform.weights)  # 0 off the positives
        pos_index = (pos.nonzero(as_tuple=True)
                     if (self.positive_weighting is not None or self.carl is not None
                         or self.sample_weighting is not None) else None)

        # ---- classification and box regression
        anchor_w = valid.to(logits.dtype)
        if self.sample_weighting is not None:
            losses = self._usw_losses(logits, targets, anchor_w, deltas, gt_deltas, gt_boxes,
                                      gt_labels, anchors_t, pos, pos_index, normalizer)
            loss_cls = losses["loss_cls"]
        elif anchor_weights is not None:
            losses = self._reweighted_losses(logits, targets, anchor_w, deltas, gt_deltas, pos,
                                             anchor_weights, normalizer)
            loss_cls = losses["loss_cls"]
        else:
            if self.positive_weighting is None:
                loss_cls = call_loss(self.cls_loss, level_sizes, logits, targets,
                                     anchor_w[..., None], normalizer=normalizer)
            else:
                if matched_gt_idxs is None or num_gts is None:
                    raise ValueError("positive_weighting needs matched_gt_idxs and num_gts "
                                     "(forward_training passes them)")
                elements = self.cls_loss.elements(logits, targets)
                img, anc = pos_index
                matched = (torch.stack(list(matched_gt_idxs))
                           if not torch.is_tensor(matched_gt_idxs) else matched_gt_idxs)
                pred = self.box2box_transform.apply_deltas(deltas[img, anc], anchors_t[anc])
                gt_ids = unique_gt_ids_from_pairs(img, matched[img, anc], num_gts)
                w = self.positive_weighting(pred, gt_boxes[img, anc], gt_ids, gt_labels[img, anc],
                                            elements[img, anc])
                if w.numel() > 0:
                    anchor_w = anchor_w.index_put(pos_index, w)
                    put_tensor_scalars(isr_p_weight_mean=w.mean(), isr_p_weight_max=w.max())
                loss_cls = self.cls_loss.reduce(elements, anchor_w[..., None], normalizer)

            # ---- box regression
            if self.box_reg_loss.on_boxes:
                pred_boxes = self.box2box_transform.apply_deltas(
                    deltas.reshape(-1, 4), anchors_t.repeat(num_images, 1)).reshape_as(deltas)
                loss_box = call_loss(self.box_reg_loss, level_sizes, pred_boxes, safe_gt,
                                     mask=pos, normalizer=normalizer)
            else:
                loss_box = call_loss(self.box_reg_loss, level_sizes, deltas, gt_deltas,
                                     mask=pos, normalizer=normalizer)
            losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box}

        # ---- PISA CARL
        if self.carl is not None:
            img, anc = pos_index
            probs = logits[img, anc, gt_labels[img, anc]].sigmoid()
            if img.numel() == 0:
                losses["loss_carl"] = self.carl.loss_weight * 0.0 * (
                    probs.float().sum() + deltas[img, anc].float().sum())
            else:
                box = self.box_reg_loss.per_box(deltas[img, anc], gt_deltas[img, anc].detach())
                losses["loss_carl"] = self.carl(probs, box, normalizer)

        # ---- Sampling-Free guided loss
        if self.guided_loss is not None:
            reg = self.guided_loss.regression(losses["loss_box_reg"])
            losses["loss_cls"], r = self.guided_loss.classification(loss_cls, reg, num_pos > 0)
            losses["loss_box_reg"] = reg
            put_tensor_scalars(guided_loss_ratio=r)
        return losses

    def _usw_losses(self, logits, targets, anchor_w, deltas, gt_deltas, gt_boxes, gt_labels,
                    anchors_t, pos, pos_index, normalizer) -> Dict[str, Tensor]:
        """USW over every anchor of the batch (the authors' ``RetinaHeadV2``, with detached
        inputs): per anchor its classification loss summed over the classes (0 for ignored
        anchors), for positives the IoU of the regressed box with the GT, the sigmoid
        probability of the GT class and the 4-d box loss; one classification score, the mean
        over all anchors. Both losses / ``normalizer``."""
        ce = (self.cls_loss.elements(logits, targets) * anchor_w[..., None]).sum(-1).reshape(-1)
        img, anc = pos_index
        box = self.box_reg_loss.elements(deltas[img, anc], gt_deltas[img, anc])
        flat_pos = pos.reshape(-1)
        fg_inds = img * pos.shape[1] + anc
        with torch.no_grad():
            probs = logits[img, anc, gt_labels[img, anc]].detach().sigmoid()
            pred = self.box2box_transform.apply_deltas(
                torch.nan_to_num(deltas[img, anc].detach(), nan=0.0), anchors_t[anc])
            ious = aligned_iou(pred, gt_boxes[img, anc])
            feats = usw_features(flat_pos.numel(), fg_inds, ious, probs, ce, box)
        return self.sample_weighting.losses(feats, ce, box, fg_inds, flat_pos, normalizer,
                                            groups=False, cls_normalizer=normalizer)

    def _reweighted_losses(self, logits, targets, anchor_w, deltas, gt_deltas, pos,
                           anchor_weights, normalizer) -> Dict[str, Tensor]:
        """An anchor assigner's weights ``r`` on every anchor's classification row and on the
        positives' box losses, each rescaled to keep its sum: ``w = r sum(l) / sum(r l)``
        (detached). Both losses / ``normalizer``."""
        C = logits.shape[-1]
        elements = self.cls_loss.elements(logits, targets) * anchor_w[..., None]
        w = renormalize_to_loss(anchor_weights.reshape(-1), elements.reshape(-1, C))
        loss_cls = self.cls_loss.reduce(elements, w.reshape_as(anchor_w)[..., None], normalizer)
        box = torch.where(pos, self.box_reg_loss.per_box(deltas, gt_deltas),
                          torch.zeros((), device=deltas.device))
        w = renormalize_to_loss(anchor_weights.reshape(-1), box.reshape(-1))
        return {"loss_cls": loss_cls, "loss_box_reg": (box * w.reshape_as(box)).sum() / normalizer}

    # ------------------------------------------------------------------ inference
    def forward_inference(self, images: ImageList, features: List[Tensor],
                          predictions: List[List[Tensor]]):
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            predictions = [[x.float() for x in p] for p in predictions]
            return super().forward_inference(images, features, predictions)

    def inference_single_image(self, anchors: List[Boxes], box_cls: List[Tensor],
                               box_delta: List[Tensor], image_size: Tuple[int, int]):
        thresh: Union[float, Tensor] = self.test_score_thresh
        if self.class_score_thresholds is not None:
            thresh = self.per_class_score_thresholds(box_cls[0], self.test_score_thresh)
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_delta, thresh, self.test_topk_candidates, image_size)
        keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes,
                           self.test_nms_thresh)
        return pred[keep[: self.max_detections_per_image]]

    def _decode_multi_level_predictions(self, anchors, pred_scores, pred_deltas, score_thresh,
                                        topk_candidates, image_size):
        """Per level threshold then top-k (honouring the arguments; v0.6 uses the instance's
        values instead). ``score_thresh`` may be a (C,) tensor of per-class thresholds."""
        predictions = [
            self._decode_per_level_predictions(a, s, d, score_thresh, topk_candidates,
                                               image_size)
            for s, d, a in zip(pred_scores, pred_deltas, anchors)
        ]
        return predictions[0].cat(predictions)

    # ------------------------------------------------------------------ Sampling-Free stats
    def count_foreground(self, image_size: Tuple[int, int], gt_boxes: Tensor,
                         gt_classes: Tensor) -> Tuple[int, int]:
        """(N_f, N) of one (padded) image with this model's anchors and matcher (ignored
        anchors excluded), as :meth:`label_anchors` labels them."""
        if self._anchor_counter is None:
            self._anchor_counter = anchor_stats_counter(self.anchor_generator,
                                                        self.anchor_matcher)
        return self._anchor_counter(image_size, gt_boxes, gt_classes)

    _anchor_counter = None

    def stats_key_settings(self) -> Dict[str, Any]:
        return {"anchors": anchor_generator_key(self.anchor_generator),
                "matcher": matcher_key(self.anchor_matcher)}

    def classification_bias(self) -> Tensor:
        return self.head.cls_score.bias
