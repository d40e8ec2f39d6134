"""RetinaNet with balanced-learning plug-ins (PISA, GHM, Libra, Sampling-Free), on detectron2's
``RetinaNet``.

:class:`BalancedRetinaNet` subclasses detectron2's ``RetinaNet`` (same head, anchors, matcher,
box transform, inference) and overrides the narrowest methods: ``losses``, ``label_anchors``
(to also return the matched GT index, needed by ISR-P), ``inference_single_image`` /
``_decode_multi_level_predictions`` (per-class thresholds; v0.6 ignores the threshold and top-k
arguments of the latter). With the defaults its losses are detectron2's: sigmoid focal loss
(alpha 0.25, gamma 2) over non-ignored anchors and Smooth L1 over positives, both divided by an
EMA of the positive count (initial 100, momentum 0.9).

Plug-ins (SPEC sections in brackets), all composable unless stated:

===============================  ===============================================================
``cls_loss_type="focal"``        detectron2's focal loss (default).
``cls_loss_type="bce"``          Sampling-Free "RetinaNet-None": plain sigmoid BCE over the
                                 non-ignored anchors, divided by the positive-count normaliser
                                 (1.8).
``cls_loss_type="ghm"``          GHM-C (1.9): one call per iteration over all levels and
                                 images, its own normalisation (valid elements). Not combinable
                                 with ISR-P (GHM sets its own element weights).
``box_reg_loss_type``            ``"smooth_l1"`` (default, beta = ``smooth_l1_beta``),
                                 ``"giou"`` (detectron2's), ``"balanced_l1"`` (Libra 3.1,
                                 alpha 0.5, gamma 1.5, beta 0.11), ``"ghm"`` (GHM-R 1.9, mu 0.02,
                                 weight 10, own normalisation: 4 x positives).
``isr_p=True``                   PISA ISR-P (1.5) on the positive anchors: IoU of the decoded
                                 prediction with its GT, IoU-HLR over the batch, weights
                                 renormalised so the positive classification loss is unchanged;
                                 the weight multiplies the positive anchor's whole loss row
                                 (all C sigmoid terms), as mmdet's ``isr_p``. No ISR-N (PISA
                                 does not use it for one-stage detectors).
``carl=True``                    PISA CARL (1.7) with sigmoid probabilities of the GT class, not
                                 detached; extra term ``loss_carl``.
``guided_loss=True``             Sampling-Free guided loss (1.8): ``loss_cls`` becomes
                                 ``w_cls r L_cls``, ``r = (w_reg L_box / L_cls).detach()``,
                                 ``r = 1`` without foreground; ``loss_box_reg`` is multiplied by
                                 ``w_reg``.
``sampling_free_init=True``      classification bias ``-log((1 - pi) / pi)``, ``pi = (N_f/N)/C``
                                 from the dataset statistics counted with this model's own
                                 anchor generator and matcher (1.8).
``class_adaptive_thresholds``    per-class inference thresholds
                                 ``theta_j = (N_f/N) N_j / sum_k N_k`` (1.8), a checkpointed
                                 buffer.
Balanced FPN                     a neck, not an option here: wrap the backbone in
                                 :class:`~balanced_det.modeling.necks.balanced_fpn.BalancedFPN`
                                 (``refine_level=1`` of P3-P7), see the Libra configs.
===============================  ===============================================================

Normalisers (SPEC 0): detectron2's EMA of the positive count is kept for every loss that is
divided by "the number of positives" (focal, BCE, Smooth L1, Balanced L1, GIoU, CARL), so the
detectron2-identical default stays identical and the plug-ins keep the ratios their authors
had (mmdet divides all of these by the batch's positive count; ``loss_normalizer_momentum=0``
gives exactly that). The EMA is a buffer (saved in checkpoints), updated without host sync.
GHM-C/GHM-R keep their own normalisation (number of valid elements), as in the reference.

No ``.item()`` in the training step (detectron2's ``RetinaNet.losses`` calls it twice, and
``Box2BoxTransform.get_deltas`` asserts on the device; the deltas are encoded here with the
same formula). ISR-P and CARL index the positives (``nonzero``), like detectron2's masked
indexing; the matcher is detectron2's. All loss maths in float32 with autocast disabled.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss, sigmoid_focal_loss, smooth_l1_loss
from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling.meta_arch.build import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou

from ...ops.balanced_l1 import balanced_l1_loss
from ...ops.carl import carl_loss
from ...ops.ghm import GHMC, GHMR
from ...ops.isr import isr_p_weights, unique_gt_ids_from_pairs
from ...ops.sampling_free import guided_classification_loss, guided_loss_ratio
from ...stats import count_anchor_foreground
from ...utils.events import put_tensor_scalars
from .fcos import SamplingFreeStatsMixin, check_choice, check_range

__all__ = ["BalancedRetinaNet", "encode_box_deltas", "aligned_iou"]

logger = logging.getLogger(__name__)


def encode_box_deltas(src: Tensor, target: Tensor, weights: Sequence[float]) -> Tensor:
    """detectron2's ``Box2BoxTransform.get_deltas`` (dx, dy, dw, dh), for (..., 4) boxes and
    without its on-device assertion (a host sync). ``src`` must have positive sizes."""
    sw = src[..., 2] - src[..., 0]
    sh = src[..., 3] - src[..., 1]
    sx = src[..., 0] + 0.5 * sw
    sy = src[..., 1] + 0.5 * sh
    tw = target[..., 2] - target[..., 0]
    th = target[..., 3] - target[..., 1]
    tx = target[..., 0] + 0.5 * tw
    ty = target[..., 1] + 0.5 * th
    wx, wy, ww, wh = weights
    return torch.stack(
        [wx * (tx - sx) / sw, wy * (ty - sy) / sh, ww * torch.log(tw / sw),
         wh * torch.log(th / sh)], dim=-1)


def aligned_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]`` (both (P, 4) XYXY), float32."""
    a, b = a.float(), b.float()
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    return inter / (area_a + area_b - inter).clamp(min=eps)


@META_ARCH_REGISTRY.register()
class BalancedRetinaNet(SamplingFreeStatsMixin, RetinaNet):
    """detectron2's RetinaNet with balanced-learning plug-ins (see the module docstring).

    All of detectron2's ``RetinaNet`` arguments, plus (defaults = detectron2 / the authors'):

    Args:
        cls_loss_type: ``"focal"`` | ``"bce"`` | ``"ghm"``.
        box_reg_loss_type: ``"smooth_l1"`` | ``"giou"`` | ``"balanced_l1"`` | ``"ghm"``.
        loss_normalizer_init, loss_normalizer_momentum: EMA of the positive count (100, 0.9).
        ghmc_bins, ghmc_momentum, ghmc_loss_weight: GHM-C (30, 0.75, 1.0).
        ghmr_mu, ghmr_bins, ghmr_momentum, ghmr_loss_weight: GHM-R (0.02, 10, 0.7, 10.0).
        balanced_l1_alpha, balanced_l1_gamma, balanced_l1_beta: Balanced L1 (0.5, 1.5, 0.11).
        isr_p, isr_p_gamma, isr_p_beta: ISR-P on/off, gamma (k) 2.0, beta (bias) 0.0.
        carl, carl_k, carl_bias, carl_beta, carl_loss_weight: CARL on/off, k 1.0, bias 0.2,
            Smooth L1 beta (``None`` = ``smooth_l1_beta``), weight 1.0.
        guided_loss, guided_loss_w_reg, guided_loss_w_cls: guided loss on/off, 1.0, 1.0.
        sampling_free_init, class_adaptive_thresholds: dataset-statistics options.
    Raises:
        ValueError: an unknown loss name (the message lists the valid ones), an out-of-range
            hyperparameter (the message names it), or ISR-P with GHM-C.
    """

    CLS_LOSS_TYPES = ("focal", "bce", "ghm")
    BOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "balanced_l1", "ghm")
    stats_counter_name = "retinanet_anchors"

    @configurable
    def __init__(
        self,
        *,
        cls_loss_type: str = "focal",
        box_reg_loss_type: str = "smooth_l1",
        loss_normalizer_init: float = 100.0,
        loss_normalizer_momentum: float = 0.9,
        ghmc_bins: int = 30,
        ghmc_momentum: float = 0.75,
        ghmc_loss_weight: float = 1.0,
        ghmr_mu: float = 0.02,
        ghmr_bins: int = 10,
        ghmr_momentum: float = 0.7,
        ghmr_loss_weight: float = 10.0,
        balanced_l1_alpha: float = 0.5,
        balanced_l1_gamma: float = 1.5,
        balanced_l1_beta: float = 0.11,
        isr_p: bool = False,
        isr_p_gamma: float = 2.0,
        isr_p_beta: float = 0.0,
        carl: bool = False,
        carl_k: float = 1.0,
        carl_bias: float = 0.2,
        carl_beta: Optional[float] = None,
        carl_loss_weight: float = 1.0,
        guided_loss: bool = False,
        guided_loss_w_reg: float = 1.0,
        guided_loss_w_cls: float = 1.0,
        sampling_free_init: bool = False,
        class_adaptive_thresholds: bool = False,
        **kwargs,
    ):
        check_choice("cls_loss_type", cls_loss_type, self.CLS_LOSS_TYPES)
        check_choice("box_reg_loss_type", box_reg_loss_type, self.BOX_REG_LOSS_TYPES)
        super().__init__(box_reg_loss_type=box_reg_loss_type, **kwargs)
        if int(self.num_classes) != self.num_classes or self.num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {self.num_classes!r}")
        self.cls_loss_type = cls_loss_type
        check_range("loss_normalizer_init", loss_normalizer_init, 0.0, low_open=True)
        self.loss_normalizer_momentum = check_range(
            "loss_normalizer_momentum", loss_normalizer_momentum, 0.0, 1.0, high_open=True)
        self.register_buffer("loss_normalizer", torch.tensor(float(loss_normalizer_init)))
        check_range("focal_loss_gamma", self.focal_loss_gamma, 0.0)
        if self.focal_loss_alpha >= 0:  # fvcore: a negative alpha disables the weighting
            check_range("focal_loss_alpha", self.focal_loss_alpha, 0.0, 1.0)
        check_range("smooth_l1_beta", self.smooth_l1_beta, 0.0)
        check_range("test_nms_thresh", self.test_nms_thresh, 0.0, 1.0)

        self.ghm_c = (GHMC(bins=ghmc_bins, momentum=ghmc_momentum, loss_weight=ghmc_loss_weight)
                      if cls_loss_type == "ghm" else None)
        self.ghm_r = (GHMR(mu=ghmr_mu, bins=ghmr_bins, momentum=ghmr_momentum,
                           loss_weight=ghmr_loss_weight)
                      if box_reg_loss_type == "ghm" else None)
        self.balanced_l1_alpha = check_range("balanced_l1_alpha", balanced_l1_alpha, 0.0,
                                             low_open=True)
        self.balanced_l1_gamma = check_range("balanced_l1_gamma", balanced_l1_gamma, 0.0,
                                             low_open=True)
        self.balanced_l1_beta = check_range("balanced_l1_beta", balanced_l1_beta, 0.0,
                                            low_open=True)

        self.isr_p = bool(isr_p)
        if self.isr_p and cls_loss_type == "ghm":
            raise ValueError("isr_p=True cannot be combined with cls_loss_type='ghm' (GHM-C sets "
                             "its own element weights); use 'focal' or 'bce'")
        self.isr_p_gamma = check_range("isr_p_gamma", isr_p_gamma, 0.0)
        self.isr_p_beta = check_range("isr_p_beta", isr_p_beta, 0.0, 1.0)
        self.carl = bool(carl)
        self.carl_k = check_range("carl_k", carl_k, 0.0)
        self.carl_bias = check_range("carl_bias", carl_bias, 0.0, 1.0)
        self.carl_beta = (self.smooth_l1_beta if carl_beta is None
                          else check_range("carl_beta", carl_beta, 0.0))
        self.carl_loss_weight = check_range("carl_loss_weight", carl_loss_weight, 0.0)
        self.guided_loss = bool(guided_loss)
        self.guided_loss_w_reg = check_range("guided_loss_w_reg", guided_loss_w_reg, 0.0,
                                             low_open=True)
        self.guided_loss_w_cls = check_range("guided_loss_w_cls", guided_loss_w_cls, 0.0,
                                             low_open=True)
        self._init_sampling_free(sampling_free_init, class_adaptive_thresholds, self.num_classes,
                                 self.test_score_thresh)

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
        gt_labels, gt_boxes, matched = self.label_anchors_with_indices(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                           matched_gt_idxs=matched, num_gts=[len(x) for x in gt_instances])

    def update_loss_normalizer(self, num_pos: Tensor) -> Tensor:
        """``ema <- m ema + (1 - m) max(num_pos, 1)`` as detectron2's ``_ema_update``, on a
        tensor buffer (no host sync); updated in training mode only."""
        if self.training:
            m = self.loss_normalizer_momentum
            new = self.loss_normalizer * m + num_pos.clamp(min=1).float() * (1 - m)
            self.loss_normalizer.copy_(new.detach())
        return self.loss_normalizer

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
               matched_gt_idxs: Optional[List[Tensor]] = None,
               num_gts: Optional[Sequence[int]] = None) -> Dict[str, Tensor]:
        """Same arguments as detectron2's ``RetinaNet.losses`` (plus the matched GT indices and
        per-image GT counts that ISR-P needs). Returns ``loss_cls``, ``loss_box_reg`` and, with
        CARL, ``loss_carl``; float32."""
        with torch.autocast(device_type=pred_logits[0].device.type, enabled=False):
            return self._losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                                matched_gt_idxs, num_gts)

    def _classification_elements(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-element (N, R, C) focal or BCE loss."""
        if self.cls_loss_type == "focal":
            return sigmoid_focal_loss(logits, targets, alpha=self.focal_loss_alpha,
                                      gamma=self.focal_loss_gamma, reduction="none")
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")

    @torch.no_grad()
    def isr_p_positive_weights(self, anchors: Tensor, deltas: Tensor, gt_boxes: Tensor,
                               gt_labels: Tensor, matched_gt_idxs: Tensor, num_gts: Sequence[int],
                               cls_elements: Tensor, pos_index: Tuple[Tensor, Tensor]) -> Tensor:
        """ISR-P weights (P,) of the positive anchors ``pos_index = (image, anchor)``: IoU of
        each positive's decoded box with its matched GT, GT ids unique over the batch
        (cumulative per-image offsets), IoU-HLR per class, renormalised with the positives'
        classification losses (rows of ``cls_elements``)."""
        img, anc = pos_index
        pred = self.box2box_transform.apply_deltas(deltas[img, anc], anchors[anc])
        ious = aligned_iou(pred, gt_boxes[img, anc])
        gt_ids = unique_gt_ids_from_pairs(img, matched_gt_idxs[img, anc], num_gts)
        return isr_p_weights(ious, gt_ids, gt_labels[img, anc], cls_elements[img, anc],
                             gamma=self.isr_p_gamma, beta=self.isr_p_beta)

    def _losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                matched_gt_idxs, num_gts) -> Dict[str, Tensor]:
        C = self.num_classes
        num_images = len(gt_labels)
        gt_labels = torch.stack(list(gt_labels)) if not torch.is_tensor(gt_labels) else gt_labels
        gt_boxes = (torch.stack(list(gt_boxes)) if not torch.is_tensor(gt_boxes)
                    else gt_boxes).float()
        anchors_t = type(anchors[0]).cat(anchors).tensor.float()  # R x 4
        logits = cat(list(pred_logits), dim=1).float()  # N x R x C
        deltas = cat(list(pred_anchor_deltas), dim=1).float()  # N x R x 4

        valid = gt_labels >= 0
        pos = valid & (gt_labels != C)
        num_pos = pos.sum()
        normalizer = self.update_loss_normalizer(num_pos)
        put_tensor_scalars(num_pos_anchors=num_pos.float() / max(num_images, 1))

        targets = F.one_hot(torch.where(valid, gt_labels, torch.full_like(gt_labels, C)),
                            C + 1)[..., :C].to(logits.dtype)
        safe_gt = torch.where(pos[..., None], gt_boxes, anchors_t.expand_as(gt_boxes))
        gt_deltas = encode_box_deltas(anchors_t.expand_as(gt_boxes), safe_gt,
                                      self.box2box_transform.weights)  # 0 off the positives
        pos_index = pos.nonzero(as_tuple=True) if (self.isr_p or self.carl) else None

        # ---- classification
        if self.cls_loss_type == "ghm":
            loss_cls = self.ghm_c(logits.reshape(-1, C), targets.reshape(-1, C),
                                  valid.reshape(-1, 1))
            put_tensor_scalars(ghm_c_nonempty_bins=self.ghm_c.last_num_nonempty)
        else:
            elements = self._classification_elements(logits, targets)
            anchor_w = valid.to(elements.dtype)
            if self.isr_p:
                if matched_gt_idxs is None or num_gts is None:
                    raise ValueError("isr_p needs matched_gt_idxs and num_gts (forward_training "
                                     "passes them)")
                matched = (torch.stack(list(matched_gt_idxs))
                           if not torch.is_tensor(matched_gt_idxs) else matched_gt_idxs)
                w = self.isr_p_positive_weights(anchors_t, deltas, gt_boxes, gt_labels, matched,
                                                num_gts, elements, pos_index)
                if w.numel() > 0:
                    anchor_w = anchor_w.index_put(pos_index, w)
                    put_tensor_scalars(isr_p_weight_mean=w.mean(), isr_p_weight_max=w.max())
            loss_cls = (elements * anchor_w[..., None]).sum() / normalizer

        # ---- box regression
        zero = torch.zeros((), device=deltas.device)
        if self.box_reg_loss_type == "ghm":
            loss_box = self.ghm_r(deltas.reshape(-1, 4), gt_deltas.reshape(-1, 4), pos.reshape(-1))
            put_tensor_scalars(ghm_r_nonempty_bins=self.ghm_r.last_num_nonempty)
        elif self.box_reg_loss_type == "giou":
            pred_boxes = self.box2box_transform.apply_deltas(
                deltas.reshape(-1, 4), anchors_t.repeat(num_images, 1)).reshape_as(deltas)
            el = giou_loss(pred_boxes, safe_gt, reduction="none")
            loss_box = torch.where(pos, el, zero).sum() / normalizer
        else:
            if self.box_reg_loss_type == "smooth_l1":
                el = smooth_l1_loss(deltas, gt_deltas, beta=self.smooth_l1_beta, reduction="none")
            else:  # balanced_l1
                el = balanced_l1_loss(deltas, gt_deltas, alpha=self.balanced_l1_alpha,
                                      gamma=self.balanced_l1_gamma, beta=self.balanced_l1_beta,
                                      reduction="none")
            loss_box = torch.where(pos, el.sum(-1), zero).sum() / normalizer

        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box}

        # ---- PISA CARL
        if self.carl:
            img, anc = pos_index
            labels_p = gt_labels[img, anc]
            probs = logits[img, anc, labels_p].sigmoid()
            losses["loss_carl"] = self.carl_loss_weight * carl_loss(
                probs, deltas[img, anc], gt_deltas[img, anc], k=self.carl_k, bias=self.carl_bias,
                beta=self.carl_beta, avg_factor=normalizer)

        # ---- Sampling-Free guided loss
        if self.guided_loss:
            has_fg = num_pos > 0
            reg = self.guided_loss_w_reg * losses["loss_box_reg"]
            put_tensor_scalars(guided_loss_ratio=guided_loss_ratio(reg, loss_cls, 1.0, has_fg))
            losses["loss_cls"] = guided_classification_loss(loss_cls, reg, 1.0,
                                                            self.guided_loss_w_cls, has_fg)
            losses["loss_box_reg"] = reg
        return losses

    # ------------------------------------------------------------------ inference
    def forward_inference(self, images: ImageList, features: List[Tensor],
                          predictions: List[List[Tensor]]):
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            predictions = [[x.float() for x in p] for p in predictions]
            return super().forward_inference(images, features, predictions)

    def inference_single_image(self, anchors: List[Boxes], box_cls: List[Tensor],
                               box_delta: List[Tensor], image_size: Tuple[int, int]):
        thresh: Union[float, Tensor] = self.test_score_thresh
        if self.class_adaptive_thresholds:
            thresh = self.per_class_score_thresholds(box_cls[0], self.num_classes,
                                                     self.test_score_thresh)
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
        """(N_f, N) of one (padded) image with this model's anchor generator and matcher
        (ignored anchors excluded), as :meth:`label_anchors` labels them."""
        device = next(iter(self.anchor_generator.cell_anchors)).device
        return count_anchor_foreground(self.anchor_generator, self.anchor_matcher,
                                       list(self.anchor_generator.strides), image_size,
                                       gt_boxes.float().reshape(-1, 4).to(device))

    def stats_key_settings(self) -> Dict[str, Any]:
        gen, matcher = self.anchor_generator, self.anchor_matcher
        return {
            "rule": "anchor_matcher",
            "cell_anchors": [[[round(float(v), 3) for v in row] for row in c.tolist()]
                             for c in gen.cell_anchors],
            "strides": [int(s) for s in gen.strides],
            "offset": float(gen.offset),
            "matcher_thresholds": [float(t) for t in matcher.thresholds
                                   if math.isfinite(float(t))],
            "matcher_labels": [int(x) for x in matcher.labels],
            "allow_low_quality_matches": bool(matcher.allow_low_quality_matches),
        }

    def classification_bias(self) -> Tensor:
        return self.head.cls_score.bias


def _merged_signature():
    """BalancedRetinaNet's own keyword arguments plus detectron2 RetinaNet's, so that
    ``inspect.signature`` (used by LazyConfig override checking) lists every valid argument
    instead of ``**kwargs``."""
    import inspect

    own = inspect.signature(inspect.unwrap(BalancedRetinaNet.__init__))
    base = inspect.signature(inspect.unwrap(RetinaNet.__init__))
    params = [p for p in own.parameters.values() if p.kind != p.VAR_KEYWORD]
    names = {p.name for p in params}
    params += [p for n, p in base.parameters.items() if n not in names and n != "self"]
    return own.replace(parameters=params)


BalancedRetinaNet.__init__.__signature__ = _merged_signature()
