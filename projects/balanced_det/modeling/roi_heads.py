"""Two-stage balanced learning in detectron2's ROI head: a sampler plug-in, positive
re-weighting, and a box predictor that takes loss plug-ins.

:class:`BalancedROIHeads` (a ``StandardROIHeads``) asks its ``sampler``
(:mod:`balanced_det.modeling.samplers`) which proposals train the box head and with which
classification weight, and applies ``positive_weighting`` (ISR-P) after the training forward.
:class:`BalancedFastRCNNOutputLayers` (a ``FastRCNNOutputLayers``) consumes the weights and
takes ``box_reg_loss``, ``carl`` and ``guided_loss`` objects (:mod:`balanced_det.modeling.losses`)
and the Sampling-Free flags ``prior_init`` / ``class_adaptive_thresholds``. With every option
at its default both are exactly detectron2's classes. :class:`EQLFastRCNNOutputLayers` is the
sigmoid predictor of Equalization Loss. Method pages: docs/methods/.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import batched_nms, cat, cross_entropy, nonzero_tuple
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import (ROI_HEADS_REGISTRY, StandardROIHeads,
                                           select_foreground_proposals)
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances, pairwise_iou

from ..ops import (aligned_iou, eql_loss, eql_roi_losses, softmax_prior_bias, tail_classes,
                   usw_features)
from ..stats import ClassFrequencyPart
from ..utils.checks import check_choice, check_int, check_plugin, check_range
from ..utils.events import put_tensor_scalars
from ..utils.signature import with_base_signature
from ..utils.tensor_math import float32_math
from .losses import CARL, BoxRegressionLoss, ElementwiseBoxLoss, GuidedLoss, SmoothL1Loss
from .mask_head import WeightedMaskRCNNConvUpsampleHead, roi_mask_losses
from .samplers import BoxHeadProbe, ISRPWeighting, SampleCandidates, Sampler, resolve_sampler
from .sampling_free import ClassScoreThresholds
from .usw import SampleWeightingNet

__all__ = ["BalancedROIHeads", "BalancedFastRCNNOutputLayers", "EQLFastRCNNOutputLayers"]

BOX_NORMALIZERS = ("rois", "positives")
#: detectron2's own box losses (others, e.g. Balanced L1, are ``box_reg_loss`` objects)
D2_BOX_LOSSES = ("smooth_l1", "giou", "diou", "ciou")


def _sample_weights(proposals: List[Instances]) -> Optional[torch.Tensor]:
    """The proposals' per-sample classification weights (float32), when every one has them."""
    if len(proposals) and all(p.has("cls_weights") for p in proposals):
        return cat([p.cls_weights for p in proposals], dim=0).float()
    return None


# ---------------------------------------------------------------------------------------------
# the box predictor
# ---------------------------------------------------------------------------------------------
@with_base_signature
class BalancedFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` with balanced-learning plug-ins; with every option at its
    default it computes exactly detectron2's losses and detections.

    Args (in addition to ``FastRCNNOutputLayers``'s):
        box_reg_loss: a delta-based :class:`~balanced_det.modeling.losses.BoxRegressionLoss`
            (e.g. ``BalancedL1Loss``) instead of detectron2's ``box_reg_loss_type``; ``None``:
            ``box_reg_loss_type`` (``"smooth_l1"`` with ``smooth_l1_beta``, or detectron2's
            ``"giou"/"diou"/"ciou"``).
        box_reg_normalizer: ``"rois"`` (detectron2: box loss / sampled ROIs) or
            ``"positives"`` (Sampling-Free: / (4 x positives)).
        carl: a :class:`~balanced_det.modeling.losses.CARL`: adds ``loss_carl`` (softmax
            probability of the GT class, the element-wise box loss, / sampled ROIs).
        guided_loss: a :class:`~balanced_det.modeling.losses.GuidedLoss` (ROI head: w_cls 2).
        prior_init: softmax optimal bias initialisation from the dataset statistics.
        class_adaptive_thresholds: per-class inference thresholds from the dataset statistics
            (buffer ``class_score_thresholds``, saved with checkpoints).
        sample_weighting: a :class:`~balanced_det.modeling.usw.SampleWeightingNet` (USW):
            ``loss_cls`` and ``loss_box_reg`` weighted by ``exp(-s)`` of its per-ROI scores,
            plus its regularisers ``loss_usw_cls``, ``loss_usw_reg`` (docs/methods/usw.md).

    Per-sample classification weights: when every proposal carries ``cls_weights`` (ISR-P /
    ISR-N), ``loss_cls = sum_i w_i CE_i / #ROIs``; otherwise detectron2's mean cross entropy.
    Loss maths in float32 with autocast off; zero ROIs / positives give finite zeros that keep
    a graph to the predictions.
    """

    supports_sample_weights = True

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        box_reg_loss: Optional[BoxRegressionLoss] = None,
        box_reg_normalizer: str = "rois",
        carl: Optional[CARL] = None,
        guided_loss: Optional[GuidedLoss] = None,
        prior_init: bool = False,
        class_adaptive_thresholds: bool = False,
        sample_weighting: Optional[SampleWeightingNet] = None,
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        check_choice("box_reg_loss_type", self.box_reg_loss_type, D2_BOX_LOSSES)
        # Newer detectron2 offers sigmoid / federated classification; these losses are softmax.
        for flag in ("use_sigmoid_ce", "use_fed_loss"):
            if getattr(self, flag, False):
                raise ValueError(f"BalancedFastRCNNOutputLayers needs a softmax classifier; "
                                 f"{flag}=True is not supported")
        check_plugin("box_reg_loss", box_reg_loss, BoxRegressionLoss)
        if box_reg_loss is not None and (box_reg_loss.on_boxes
                                         or not isinstance(box_reg_loss, ElementwiseBoxLoss)):
            raise ValueError(f"box_reg_loss={box_reg_loss!r} is not valid; expected an "
                             "element-wise loss on deltas (SmoothL1Loss, BalancedL1Loss)")
        if box_reg_loss is None and self.box_reg_loss_type == "smooth_l1":
            box_reg_loss = SmoothL1Loss(self.smooth_l1_beta)
        self.box_loss = box_reg_loss
        self.box_reg_normalizer = check_choice("box_reg_normalizer", box_reg_normalizer,
                                               BOX_NORMALIZERS)
        if (carl is not None or box_reg_normalizer == "positives") and self.box_loss is None:
            raise ValueError(f"carl / box_reg_normalizer='positives' need an element-wise box "
                             f"loss; box_reg_loss_type={self.box_reg_loss_type!r} is not one")
        if sample_weighting is not None and self.box_loss is None:
            raise ValueError(f"sample_weighting needs an element-wise box loss (its 4-d input); "
                             f"box_reg_loss_type={self.box_reg_loss_type!r} is not one")
        self.carl = check_plugin("carl", carl, CARL)
        self.guided_loss = check_plugin("guided_loss", guided_loss, GuidedLoss)
        self.sample_weighting = check_plugin("sample_weighting", sample_weighting,
                                             SampleWeightingNet)
        self.prior_init = bool(prior_init)
        self.class_score_thresholds = (
            ClassScoreThresholds(self.num_classes, self.test_score_thresh)
            if class_adaptive_thresholds else None)

    @property
    def needs_dataset_stats(self) -> bool:
        return self.prior_init or self.class_score_thresholds is not None

    @torch.no_grad()
    def apply_dataset_stats(self, fg_fraction: float, class_counts: Sequence[int]) -> None:
        """Softmax prior: foreground biases 0, background ``log(C (1 - f) / f)`` (so the
        initial ``p(class j) = f / C``); class-adaptive thresholds from ``f`` and ``N_j``."""
        if self.prior_init:
            fg, bg = softmax_prior_bias(fg_fraction, self.num_classes)
            bias = self.cls_score.bias
            bias[: self.num_classes] = fg
            bias[self.num_classes] = bg
        if self.class_score_thresholds is not None:
            self.class_score_thresholds.set_from_stats(fg_fraction, class_counts)

    def decode_class_boxes(self, deltas: torch.Tensor, boxes: torch.Tensor,
                           classes: torch.Tensor) -> torch.Tensor:
        """(R, 4) boxes from the deltas (R, K*4 or 4) of class ``classes[i]`` of each row."""
        box_dim = boxes.shape[1]
        if deltas.shape[1] != box_dim:  # class-specific regression
            deltas = deltas.view(-1, self.num_classes, box_dim)[
                torch.arange(classes.numel(), device=classes.device), classes]
        return self.box2box_transform.apply_deltas(deltas, boxes)

    def roi_classification_losses(self, scores: torch.Tensor,
                                  gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) float32 per-ROI classification loss of this predictor (softmax cross
        entropy): what OHEM ranks."""
        with float32_math(scores):
            return F.cross_entropy(scores.float(), gt_classes, reduction="none")

    # ---- training ---------------------------------------------------------------------------
    def _fg_regression(self, proposal_boxes, gt_boxes, pred_deltas, gt_classes):
        """Foreground indices, their predicted deltas (of the GT class) and target deltas."""
        box_dim = proposal_boxes.shape[1]
        fg_inds = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        if pred_deltas.shape[1] == box_dim:  # class-agnostic regression
            fg_pred = pred_deltas[fg_inds]
        else:
            fg_pred = pred_deltas.view(-1, self.num_classes, box_dim)[fg_inds, gt_classes[fg_inds]]
        fg_target = self.box2box_transform.get_deltas(proposal_boxes[fg_inds], gt_boxes[fg_inds])
        return fg_inds, fg_pred, fg_target

    def losses(self, predictions, proposals):
        """``loss_cls`` (weighted / guided if configured), ``loss_box_reg``, with CARL
        ``loss_carl``, with USW ``loss_usw_cls`` and ``loss_usw_reg``."""
        scores, proposal_deltas = predictions
        with float32_math(scores):
            scores = scores.float()
            proposal_deltas = proposal_deltas.float()
            gt_classes = (cat([p.gt_classes for p in proposals], dim=0) if len(proposals)
                          else torch.empty(0, dtype=torch.long, device=scores.device))
            self._log_classification_stats(scores, gt_classes)
            if len(proposals):
                proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
                assert not proposal_boxes.requires_grad, "Proposals should not require gradients!"
                gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor
                                for p in proposals], dim=0)
            else:
                proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
            num_rois = gt_classes.numel()

            if self.sample_weighting is not None:
                losses, fg_inds, elem = self._usw_losses(scores, proposal_deltas, gt_classes,
                                                          proposal_boxes, gt_boxes, proposals)
                loss_cls = losses["loss_cls"]
            else:
                loss_cls = self.classification_loss(scores, gt_classes, proposals)
                if self.box_loss is not None:
                    fg_inds, fg_pred, fg_target = self._fg_regression(
                        proposal_boxes, gt_boxes, proposal_deltas, gt_classes)
                    elem = self.box_loss.elements(fg_pred, fg_target)
                    norm = self._box_normalizer(fg_inds.numel(), num_rois,
                                                proposal_boxes.shape[1])
                    loss_box_reg = elem.sum() / norm
                else:
                    loss_box_reg = self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas,
                                                     gt_classes)
                losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}

            if self.carl is not None:
                if fg_inds.numel() == 0:
                    losses["loss_carl"] = 0.0 * (scores.sum() + proposal_deltas.sum())
                else:
                    probs = F.softmax(scores, dim=1)[fg_inds, gt_classes[fg_inds]]  # not detached
                    losses["loss_carl"] = self.carl(
                        probs, elem.reshape(fg_inds.numel(), -1).sum(dim=1),
                        float(max(num_rois, 1)))
            losses = {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

            if self.guided_loss is not None:
                has_fg = ((gt_classes >= 0) & (gt_classes < self.num_classes)).any()
                losses["loss_box_reg"] = self.guided_loss.regression(losses["loss_box_reg"])
                cls, r = self.guided_loss.classification(loss_cls, losses["loss_box_reg"], has_fg)
                losses["loss_cls"] = cls * self.loss_weight.get("loss_cls", 1.0)
                put_tensor_scalars(**{"fast_rcnn/guided_ratio": r})
        return losses

    def _box_normalizer(self, num_fg, num_rois: int, box_dim: int = 4) -> float:
        """The box-loss divisor of ``box_reg_normalizer``: sampled ROIs or 4 x positives."""
        if self.box_reg_normalizer == "positives":
            return float(max(num_fg * box_dim, 1))
        return float(max(num_rois, 1))

    def _usw_losses(self, scores, deltas, gt_classes, proposal_boxes, gt_boxes, proposals):
        """USW's weighted ``loss_cls`` / ``loss_box_reg`` and regularisers (float32 inputs);
        returns ``(losses, fg_inds, element-wise box loss of the positives)``. The network's
        inputs (:func:`~balanced_det.ops.usw_features`) are detached. With a mask score, the
        proposals' ``usw_mask_loss`` is its fifth input and each proposal gets
        ``mask_loss_weight`` (``exp(-s_mask)`` for positives, 1 otherwise) for the mask head."""
        num_rois = gt_classes.numel()
        fg_mask = (gt_classes >= 0) & (gt_classes < self.num_classes)
        ce = (F.cross_entropy(scores, gt_classes, reduction="none") if num_rois
              else scores.sum(dim=1))
        fg_inds, fg_pred, fg_target = self._fg_regression(proposal_boxes, gt_boxes, deltas,
                                                          gt_classes)
        elem = self.box_loss.elements(fg_pred, fg_target)
        with torch.no_grad():
            fg_cls = gt_classes[fg_inds]
            probs_gt = F.softmax(scores.detach(), dim=1)[fg_inds, fg_cls]
            pred_boxes = self.box2box_transform.apply_deltas(
                torch.nan_to_num(fg_pred.detach(), nan=0.0), proposal_boxes[fg_inds])
            ious = aligned_iou(pred_boxes, gt_boxes[fg_inds])
            mask_loss = None
            if self.sample_weighting.mask:
                if not all(p.has("usw_mask_loss") for p in proposals):
                    raise RuntimeError("sample_weighting with mask=True needs the proposals' "
                                       "usw_mask_loss, set by BalancedROIHeads with a mask head")
                mask_loss = cat([p.usw_mask_loss for p in proposals], dim=0)[fg_inds]
            feats = usw_features(num_rois, fg_inds, ious, probs_gt, ce, elem, mask_loss)
        losses = self.sample_weighting.losses(
            feats, ce, elem, fg_inds, fg_mask,
            self._box_normalizer(fg_inds.numel(), num_rois, proposal_boxes.shape[1]),
            _sample_weights(proposals))
        if self.sample_weighting.mask:
            w = torch.ones(num_rois, device=scores.device).index_copy(
                0, fg_inds, losses.pop("mask_weights"))
            for p, w_i in zip(proposals, w.split([len(p) for p in proposals])):
                p.mask_loss_weight = w_i
        return losses, fg_inds, elem

    def classification_loss(self, scores: torch.Tensor, gt_classes: torch.Tensor,
                            proposals: List[Instances]) -> torch.Tensor:
        """Softmax cross entropy: ``sum_i w_i CE_i / #ROIs`` when every proposal carries
        ``cls_weights``, otherwise detectron2's mean (float32 ``scores``)."""
        weights = _sample_weights(proposals)
        if weights is None:
            return cross_entropy(scores, gt_classes, reduction="mean")
        if gt_classes.numel() == 0:
            return scores.sum() * 0.0
        ce = F.cross_entropy(scores, gt_classes, reduction="none")
        return (weights * ce).sum() / gt_classes.numel()

    def _log_classification_stats(self, scores: torch.Tensor, gt_classes: torch.Tensor) -> None:
        """detectron2's ``fast_rcnn/*`` accuracy statistics, logged without a host sync."""
        if gt_classes.numel() == 0:
            return
        bg = scores.shape[1] - 1
        pred = scores.argmax(dim=1)
        fg = (gt_classes >= 0) & (gt_classes < bg)
        num_fg = fg.sum().clamp(min=1).float()
        put_tensor_scalars(**{
            "fast_rcnn/cls_accuracy": (pred == gt_classes).float().mean(),
            "fast_rcnn/fg_cls_accuracy": ((pred == gt_classes) & fg).sum() / num_fg,
            "fast_rcnn/false_negative": ((pred == bg) & fg).sum() / num_fg,
        })

    # ---- inference --------------------------------------------------------------------------
    def inference(self, predictions, proposals: List[Instances]):
        """detectron2's inference; with class-adaptive thresholds the per-class thresholds
        replace ``test_score_thresh`` (one vectorised comparison per image)."""
        if self.class_score_thresholds is None:
            return super().inference(predictions, proposals)
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        thresholds = self.class_score_thresholds.values
        out = [
            _inference_single_image(b, s.float(), p.image_size, thresholds,
                                    self.test_nms_thresh, self.test_topk_per_image)
            for b, s, p in zip(boxes, scores, proposals)
        ]
        return [x[0] for x in out], [x[1] for x in out]


@with_base_signature
class EQLFastRCNNOutputLayers(BalancedFastRCNNOutputLayers, ClassFrequencyPart):
    """Equalization Loss box predictor (docs/methods/eql.md): a sigmoid classifier over the C
    classes (no background logit) trained with ``sum_ij w_ij BCE(x_ij, y_ij) / R``,
    ``w_ij = 1 - E_i T_lambda(f_j) (1 - y_ij)`` (:func:`balanced_det.ops.eql_loss`).

    Args (in addition to :class:`BalancedFastRCNNOutputLayers`'s, of which ``box_reg_loss``,
    ``box_reg_normalizer`` and ``guided_loss`` apply; ``carl``, ``prior_init`` and
    ``class_adaptive_thresholds`` are softmax-only and refused):
        lambda_: the tail threshold, in (0, 1): class j is a tail class iff ``f_j < lambda_``
            (LVIS v0.5: 0.00177, v1: 0.0011).
        prior_prob: initial probability of every class, ``bias = -log((1 - pi) / pi)``
            (0.001; the weight is N(0, 0.01)).

    The frequencies ``f_j`` (images containing class j / images with annotations) come from
    the training set's statistics (:class:`~balanced_det.stats.ClassFrequencyPart`, applied by
    ``BalancedRCNN``) and are kept in the buffer ``class_frequencies`` (saved in checkpoints);
    training without them fails. Box regression (class-specific or agnostic) trains on every
    foreground ROI, the last class included. Inference: ``sigmoid`` scores per class, then
    detectron2's ``fast_rcnn_inference`` (the configs set threshold 1e-4, 300 detections).
    """

    supports_sample_weights = False

    @configurable
    def __init__(self, input_shape, *, lambda_: float, prior_prob: float = 0.001, **kwargs):
        for name in ("carl", "prior_init", "class_adaptive_thresholds"):
            if kwargs.get(name):
                raise ValueError(f"{name}={kwargs[name]!r} is not valid with "
                                 "EQLFastRCNNOutputLayers; expected None/False (softmax only)")
        super().__init__(input_shape, **kwargs)
        self.lambda_ = check_range("lambda_", lambda_, 0.0, 1.0, low_open=True, high_open=True)
        pi = check_range("prior_prob", prior_prob, 0.0, 1.0, low_open=True, high_open=True)
        self.cls_score = nn.Linear(self.cls_score.in_features, self.num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - pi) / pi))
        self.register_buffer("class_frequencies", torch.full((self.num_classes,), float("nan")))
        self._has_frequencies = False

    @property
    def needs_class_frequencies(self) -> bool:
        return True

    @torch.no_grad()
    def apply_class_frequencies(self, frequencies: Sequence[float]) -> None:
        """Set ``f_j`` (C values in [0, 1])."""
        f = torch.as_tensor(list(frequencies), dtype=torch.float32)
        if f.shape != (self.num_classes,) or not bool(((f >= 0) & (f <= 1)).all()):
            raise ValueError(f"frequencies={list(frequencies)!r} is not valid; expected "
                             f"{self.num_classes} values in [0, 1]")
        self.class_frequencies.copy_(f.to(self.class_frequencies.device))
        self._has_frequencies = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "class_frequencies" in state_dict:
            self._has_frequencies = True

    def tail_classes(self) -> torch.Tensor:
        """(C,) bool, ``T_lambda(f_j) = [f_j < lambda]``."""
        return tail_classes(self.class_frequencies, self.lambda_)

    def classification_loss(self, scores, gt_classes, proposals):
        """Equalization loss over the C sigmoid logits, / sampled ROIs."""
        if not self._has_frequencies:
            raise RuntimeError(
                "EQLFastRCNNOutputLayers has no class frequencies: build the model with "
                "balanced_det.engine.build_model (a BalancedRCNN applies the dataset "
                "statistics) or call apply_class_frequencies first")
        return eql_loss(scores, gt_classes, self.tail_classes())

    def roi_classification_losses(self, scores, gt_classes):
        """(R,) per-ROI equalization loss ``sum_j w_ij BCE(x_ij, y_ij)`` (what OHEM ranks)."""
        return eql_roi_losses(scores, gt_classes, self.tail_classes())

    def _log_classification_stats(self, scores, gt_classes):
        # A zero logit stands for background: predicted background iff every sigmoid < 0.5.
        super()._log_classification_stats(F.pad(scores, (0, 1)), gt_classes)

    def predict_probs(self, predictions, proposals: List[Instances]):
        """Per-class sigmoid probabilities (no renormalisation) and a zero background column,
        which ``fast_rcnn_inference`` drops: (R_i, C + 1) per image."""
        scores, _ = predictions
        probs = F.pad(torch.sigmoid(scores.float()), (0, 1))
        return probs.split([len(p) for p in proposals], dim=0)


def _inference_single_image(boxes, scores, image_shape, score_thresh: torch.Tensor,
                            nms_thresh: float, topk_per_image: int):
    """``fast_rcnn_inference_single_image`` with a (K,) tensor of per-class thresholds:
    class ``j`` of ROI ``i`` is kept iff ``scores[i, j] > score_thresh[j]``."""
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid.all():
        boxes, scores = boxes[valid], scores[valid]
    scores = scores[:, :-1]
    num_reg = boxes.shape[1] // 4
    boxes = Boxes(boxes.reshape(-1, 4))
    boxes.clip(image_shape)
    boxes = boxes.tensor.view(-1, num_reg, 4)
    filter_mask = scores > score_thresh.to(scores)[None, :]
    filter_inds = filter_mask.nonzero()
    boxes = boxes[filter_inds[:, 0], 0] if num_reg == 1 else boxes[filter_mask]
    scores = scores[filter_mask]
    keep = batched_nms(boxes, scores, filter_inds[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    boxes, scores, filter_inds = boxes[keep], scores[keep], filter_inds[keep]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = filter_inds[:, 1]
    return result, filter_inds[:, 0]


# ---------------------------------------------------------------------------------------------
# the ROI head
# ---------------------------------------------------------------------------------------------
@ROI_HEADS_REGISTRY.register()
@with_base_signature
class BalancedROIHeads(StandardROIHeads):
    """``StandardROIHeads`` with a sampler plug-in and optional positive re-weighting.

    Args (in addition to ``StandardROIHeads``'s; ``batch_size_per_image`` and
    ``positive_fraction`` are the sampler's budget):
        sampler: a :class:`~balanced_det.modeling.samplers.Sampler` (``RandomSampler``,
            ``OHEMSampler``, ``CombinedSampler``, ``ScoreHLRSampler``, ``AllSampler``);
            ``None`` = detectron2's random sampling.
        positive_weighting: an :class:`~balanced_det.modeling.samplers.ISRPWeighting` (PISA's
            ISR-P) applied to the sampled positives after the training forward, or ``None``.
            It and weighting samplers need a predictor that takes per-sample weights
            (:class:`BalancedFastRCNNOutputLayers`).

    Candidates are the proposals plus the appended GT boxes (``proposal_append_gt``), labelled
    by ``proposal_matcher`` as in ``StandardROIHeads``; ignored proposals are never sampled.
    Samplers that score candidates get one no-grad forward of this head's pooler, box head and
    predictor (train mode) over all images at once. ISR-P uses the IoU of each positive's
    regressed box (delta of its GT class) with its GT and GT ids unique over the batch.

    Analysis hook: :attr:`sample_recorder` (``None`` by default). A callable
    ``recorder(proposals, predictions)`` is called by every training ``_forward_box`` with the
    sampled proposals (``gt_classes``, ``gt_boxes``, ``cls_weights`` when the samples are
    weighted) and the predictor's ``(scores, deltas)``, before the losses; it must not modify
    its arguments.
    """

    #: ``None`` or ``recorder(proposals, predictions)``; see the class docstring.
    sample_recorder: Optional[Callable[[List[Instances], Tuple[torch.Tensor, torch.Tensor]],
                                       None]] = None

    @configurable
    def __init__(self, *, sampler: Optional[Sampler] = None,
                 positive_weighting: Optional[ISRPWeighting] = None, **kwargs):
        super().__init__(**kwargs)
        check_range("positive_fraction", self.positive_fraction, 0.0, 1.0)
        check_int("batch_size_per_image", self.batch_size_per_image, 1)
        self.sampler = resolve_sampler(sampler)
        self.positive_weighting = check_plugin("positive_weighting", positive_weighting,
                                            ISRPWeighting)
        weighted = self.positive_weighting is not None or self.sampler.weights_samples
        if weighted and not getattr(self.box_predictor, "supports_sample_weights", False):
            raise ValueError(
                f"sampler={self.sampler!r} / positive_weighting={self.positive_weighting!r} "
                f"weight samples; they need a box predictor that takes per-sample weights, "
                f"e.g. BalancedFastRCNNOutputLayers, not {type(self.box_predictor).__name__}")
        usw = getattr(self.box_predictor, "sample_weighting", None)
        self.usw_mask = usw is not None and usw.mask
        if self.usw_mask and not (self.mask_on and isinstance(
                self.mask_head, WeightedMaskRCNNConvUpsampleHead)):
            raise ValueError(
                f"sample_weighting={usw!r} weights the mask loss (mask=True); it needs a mask "
                f"head that takes per-ROI weights, WeightedMaskRCNNConvUpsampleHead, not "
                f"{type(self.mask_head).__name__ if self.mask_on else 'no mask head'}")

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, images, features: Dict[str, torch.Tensor], proposals: List[Instances],
                targets: Optional[List[Instances]] = None):
        """``StandardROIHeads.forward``; in training the sampler also sees the features."""
        if not self.training:
            return super().forward(images, features, proposals, targets)
        del images
        assert targets, "'targets' argument is required during training"
        proposals = self.label_and_sample_proposals(proposals, targets, features=features)
        del targets
        if self.usw_mask:
            self._set_usw_mask_losses(features, proposals)
        losses = self._forward_box(features, proposals)
        losses.update(self._forward_mask(features, proposals))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        if not self.training:
            return super()._forward_box(features, proposals)
        feats = [features[f] for f in self.box_in_features]
        box_features = self.box_head(self.box_pooler(feats, [x.proposal_boxes for x in proposals]))
        predictions = self.box_predictor(box_features)
        del box_features
        if self.positive_weighting is not None:
            self._apply_isr_p(predictions, proposals)
        if self.sample_recorder is not None:
            self.sample_recorder(proposals, predictions)
        losses = self.box_predictor.losses(predictions, proposals)
        if self.train_on_pred_boxes:
            with torch.no_grad():
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                for p, b in zip(proposals, pred_boxes):
                    p.proposal_boxes = Boxes(b)
        return losses

    @torch.no_grad()
    def _set_usw_mask_losses(self, features: Dict[str, torch.Tensor],
                             proposals: List[Instances]) -> None:
        """USW's mask-loss input: ``usw_mask_loss`` (R_i,) on every sampled proposal, the
        per-ROI mask loss (:func:`~balanced_det.modeling.mask_head.roi_mask_losses`) of one
        no-grad mask-head forward for the positives, 0 for the others."""
        fg_props, fg_masks = select_foreground_proposals(proposals, self.num_classes)
        feats = [features[f] for f in self.mask_in_features]
        logits = self.mask_head.layers(self.mask_pooler(feats, [p.proposal_boxes
                                                                 for p in fg_props]))
        per_roi = roi_mask_losses(logits, fg_props).split([len(p) for p in fg_props])
        for p, is_fg, loss in zip(proposals, fg_masks, per_roi):
            p.usw_mask_loss = torch.zeros(len(p), device=loss.device).masked_scatter(is_fg, loss)

    # ---- labelling and sampling -------------------------------------------------------------
    def _labels(self, matched_idxs, matched_labels, gt_classes):
        """Per-proposal class: GT class, ``num_classes`` (background) or -1 (ignored), as
        ``StandardROIHeads._sample_proposals`` assigns them."""
        if gt_classes.numel() > 0:
            labels = gt_classes[matched_idxs]
            labels[matched_labels == 0] = self.num_classes
            labels[matched_labels == -1] = -1
        else:
            labels = torch.zeros_like(matched_idxs) + self.num_classes
        return labels

    def _predict_no_grad(self, features, boxes: List[Boxes]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The box head over ``boxes`` (one entry per image), float32 ``(scores, deltas)``."""
        feats = [features[f] for f in self.box_in_features]
        scores, deltas = self.box_predictor(self.box_head(self.box_pooler(feats, boxes)))
        return scores.float(), deltas.float()

    def _probe(self, features) -> BoxHeadProbe:
        return BoxHeadProbe(predict=lambda boxes: self._predict_no_grad(features, boxes),
                            decode=self.box_predictor.decode_class_boxes,
                            roi_losses=self.box_predictor.roi_classification_losses)

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances],
                                   features: Optional[Dict[str, torch.Tensor]] = None
                                   ) -> List[Instances]:
        """Match proposals (+ appended GTs) to targets and sample with ``self.sampler``.

        Returns the sampled proposals with detectron2's fields (``gt_classes``, ``gt_*``) and,
        when used, ``cls_weights`` (per-sample classification weights, float32) and ``gt_uid``
        (GT id unique over the batch, -1 for background; for ISR-P).
        """
        if self.sampler.needs_box_head and features is None:
            raise ValueError(f"sampler={self.sampler!r} runs the box head over candidate "
                             "proposals: pass features= to label_and_sample_proposals")
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)

        ious, matched, labels = [], [], []
        for p, t in zip(proposals, targets):
            iou = pairwise_iou(t.gt_boxes, p.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            ious.append(iou)
            matched.append(matched_idxs)
            labels.append(self._labels(matched_idxs, matched_labels, t.gt_classes))
        candidates = SampleCandidates(
            labels=labels, matched_gt=matched, ious=ious,
            boxes=[p.proposal_boxes for p in proposals], num_classes=self.num_classes,
            num_per_image=self.batch_size_per_image, positive_fraction=self.positive_fraction,
            probe=self._probe(features) if self.sampler.needs_box_head else None)
        picks = self.sampler(candidates)

        out, num_fg, num_bg = [], [], []
        gt_offset = 0
        for p, t, mi, lab_all, (idx, weights) in zip(proposals, targets, matched, labels, picks):
            lab = lab_all[idx]
            sp = p[idx]
            sp.gt_classes = lab
            if len(t) > 0:
                tgt = mi[idx]
                for name, value in t.get_fields().items():
                    if name.startswith("gt_") and not sp.has(name):
                        sp.set(name, value[tgt])
            if self.positive_weighting is not None:
                fg = (lab >= 0) & (lab < self.num_classes)
                sp.gt_uid = torch.where(fg, mi[idx] + gt_offset, torch.full_like(lab, -1))
            if weights is not None:
                sp.cls_weights = weights
            gt_offset += len(t)
            is_bg = lab == self.num_classes
            num_bg.append(is_bg.sum())
            num_fg.append(lab.numel() - num_bg[-1])
            out.append(sp)
        if out:
            fg_total = torch.stack(num_fg).float().sum()
            bg_total = torch.stack(num_bg).float().sum()
            put_tensor_scalars(**{
                "roi_head/num_fg_samples": fg_total / len(out),
                "roi_head/num_bg_samples": bg_total / len(out),
                "roi_head/fg_fraction": fg_total / (fg_total + bg_total).clamp(min=1),
            })
        return out

    # ---- ISR-P ------------------------------------------------------------------------------
    @torch.no_grad()
    def _apply_isr_p(self, predictions, proposals: List[Instances]) -> None:
        """``positive_weighting`` weights on the positives' ``cls_weights`` (others keep
        theirs, or 1)."""
        if not proposals:
            return
        scores, deltas = predictions
        with float32_math(scores):
            scores, deltas = scores.detach().float(), deltas.detach().float()
            gt_classes = cat([p.gt_classes for p in proposals], dim=0)
            if all(p.has("cls_weights") for p in proposals):
                weights = cat([p.cls_weights for p in proposals], dim=0).float().clone()
            else:
                weights = torch.ones(gt_classes.numel(), device=scores.device)
            fg = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
            if fg.numel() > 0:
                boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)[fg]
                gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor
                                for p in proposals], dim=0)[fg]
                lab = gt_classes[fg]
                pred = self.box_predictor.decode_class_boxes(deltas[fg], boxes, lab)
                uid = cat([p.gt_uid for p in proposals], dim=0)[fg]
                ce = F.cross_entropy(scores[fg], lab, reduction="none")
                w = self.positive_weighting(pred, gt_boxes, uid, lab, ce)
                weights[fg] = w
                put_tensor_scalars(**{"roi_head/isr_p_weight_mean": w.mean(),
                                      "roi_head/isr_p_weight_max": w.max()})
        for p, w in zip(proposals, weights.split([len(p) for p in proposals])):
            p.cls_weights = w

    # ---- Sampling-Free statistics (counted by BalancedRCNN from the RPN's anchors) -----------
    @property
    def needs_dataset_stats(self) -> bool:
        return bool(getattr(self.box_predictor, "needs_dataset_stats", False))

    def apply_dataset_stats(self, fg_fraction: float, class_counts: Sequence[int]) -> None:
        self.box_predictor.apply_dataset_stats(fg_fraction, class_counts)
