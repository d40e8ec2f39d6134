"""Two-stage balanced learning in detectron2's ROI head: sampler plug-ins and a box predictor
with the objective-level options (SPEC 1.1-1.8, 3.1).

:class:`BalancedROIHeads` (a ``StandardROIHeads``) chooses which proposals train the box head
and with which per-sample classification weight:

============  ==========================================================================
``sampler``   what is sampled (512 ROIs/image, 25 % positive by default)
============  ==========================================================================
``random``    detectron2's ``subsample_labels`` (default; exactly ``StandardROIHeads``)
``ohem``      OHEM (SPEC 1.2): a no-grad box-head forward over all labelled proposals, the
              highest classification losses among positives / negatives
``libra``     Libra R-CNN (SPEC 1.3-1.4): instance-balanced positives, IoU-balanced
              negatives
``pisa``      PISA (SPEC 1.5-1.6): random positives; negatives by ISR-N (Score-HLR over a
              no-grad box-head forward, per-sample weights); ISR-P weights on positives
``none``      Sampling-Free (SPEC 1.8): every proposal with label >= 0
============  ==========================================================================

ISR-P (``isr_p``) is a weighting of the positives after the box-head forward and combines with
any sampler (on by default only with ``pisa``). :class:`BalancedFastRCNNOutputLayers` (a
``FastRCNNOutputLayers``) consumes the weights and adds: Balanced L1 box loss (SPEC 3.1), the
CARL term ``loss_carl`` (SPEC 1.7), the guided classification loss, the softmax optimal bias
initialisation and class-adaptive score thresholds (SPEC 1.8).

Host synchronisation: one boolean selection per image and sampler stage (candidate lists and
sampled indices have data-dependent sizes; detectron2's own sampler does the same), OHEM's
positive count per image (it sets the number of negatives), one per batch for the foreground
indices of the losses and of ISR-P (as detectron2's ``box_reg_loss``), and ISR-N's clustering
per image (NMS's output and the suppressed boxes; ``nms_cluster_local_rank``). Nothing is
synchronised per GT, per proposal or per cluster. Statistics are logged with
``put_tensor_scalars``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import smooth_l1_loss

from detectron2.config import configurable
from detectron2.layers import batched_nms, cat, cross_entropy, nonzero_tuple
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou

from ..ops import (
    balanced_l1_loss,
    carl_weights,
    class_adaptive_thresholds,
    guided_loss_ratio,
    instance_balanced_pos_sample,
    iou_balanced_neg_sample,
    isr_n_select,
    isr_p_weights,
    ohem_topk,
    random_choice,
    renormalize_to_loss,
    softmax_prior_bias,
)
from ..utils.events import put_tensor_scalars

__all__ = ["BalancedROIHeads", "BalancedFastRCNNOutputLayers", "ROI_SAMPLERS"]

ROI_SAMPLERS = ("random", "ohem", "libra", "pisa", "none")
BOX_LOSSES = ("smooth_l1", "balanced_l1", "giou", "diou", "ciou")
BOX_NORMALIZERS = ("rois", "positives")


# ---------------------------------------------------------------------------------------------
# argument checks (clear errors at the config boundary)
# ---------------------------------------------------------------------------------------------
def _check_choice(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; expected one of: {', '.join(choices)}")


def _check_nonneg(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={value!r} must be a finite number >= 0")


def _check_unit(name: str, value: float, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and (0 < value <= 1 if open_low else 0 <= value <= 1)
    if not ok:
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name}={value!r} must be in {interval}")


@contextmanager
def _float32_math(t: torch.Tensor):
    """Loss maths in float32: autocast off on the device of ``t`` (callers cast inputs)."""
    device_type = t.device.type if t.device.type in ("cuda", "cpu") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        yield


# ---------------------------------------------------------------------------------------------
# the box predictor
# ---------------------------------------------------------------------------------------------
class BalancedFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` with balanced-learning options. With every option at its
    default it computes exactly detectron2's losses and detections.

    Args (in addition to ``FastRCNNOutputLayers``'s):
        box_reg_loss_type: ``"smooth_l1"`` (detectron2's, beta = ``smooth_l1_beta``),
            ``"balanced_l1"`` (Libra, SPEC 3.1) or detectron2's ``"giou"/"diou"/"ciou"``.
        balanced_l1_alpha, balanced_l1_gamma, balanced_l1_beta: 0.5, 1.5, 1.0 (SPEC 3.1).
        box_reg_normalizer: ``"rois"`` (detectron2 and mmdet: box loss summed over positives
            and divided by the number of sampled ROIs) or ``"positives"`` (Sampling-Free: the
            mean over the positives' box coordinates, i.e. divided by ``4 * #positives``, as
            the authors' code ``/ (labels_pos.numel() * 4)``; with every proposal kept,
            dividing by the ROI count would make the box loss vanish).
        carl: add PISA's classification-aware regression loss ``loss_carl`` (SPEC 1.7):
            ``p_i`` = softmax probability of the GT class (not detached),
            ``c_i = v_i / mean(v)``, ``v_i = ((1 - carl_bias) p_i + carl_bias) ** carl_k``,
            ``L = sum_i c_i * sum_coords box_loss_i / #sampled ROIs`` with the same element-wise
            box loss as ``loss_box_reg`` (mmdet uses its head's ``loss_bbox``). Its weight is
            ``loss_weight["loss_carl"]`` (default 1.0).
        carl_k, carl_bias: 1.0, 0.2.
        guided_loss: Sampling-Free's guided classification loss (SPEC 1.8):
            ``loss_cls = w_cls * r * L_cls`` with ``r = (w_reg L_reg / L_cls).detach()``,
            ``w_reg L_reg`` = the weighted ``loss_box_reg``; ``r = 1`` without foreground.
        guided_w_cls: ``w_cls``, 2.0 for the ROI head (SPEC 1.8).
        prior_init: Sampling-Free optimal bias initialisation of the softmax classifier,
            applied by :meth:`apply_softmax_prior` from dataset statistics (see there).
        class_adaptive_thresholds: at inference, class ``j`` keeps scores above
            ``theta_j = (N_f / N) * N_j / sum_k N_k`` (SPEC 1.8) instead of the global
            ``test_score_thresh``. The thresholds live in the buffer ``class_score_thresh``
            (saved with checkpoints), filled by :meth:`set_class_thresholds`; until then every
            class uses ``test_score_thresh``.

    Per-sample classification weights: if every proposal ``Instances`` carries a
    ``cls_weights`` field (ISR-P / ISR-N), ``loss_cls = sum_i w_i CE_i / #ROIs`` (mmdet's
    ``avg_factor`` = number of sampled ROIs); otherwise detectron2's mean cross entropy.

    All loss maths runs in float32 with autocast disabled; zero ROIs / zero positives give
    finite zero losses that keep a graph to the predictions.
    """

    supports_sample_weights = True

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        box_reg_loss_type: str = "smooth_l1",
        balanced_l1_alpha: float = 0.5,
        balanced_l1_gamma: float = 1.5,
        balanced_l1_beta: float = 1.0,
        box_reg_normalizer: str = "rois",
        carl: bool = False,
        carl_k: float = 1.0,
        carl_bias: float = 0.2,
        guided_loss: bool = False,
        guided_w_cls: float = 2.0,
        prior_init: bool = False,
        class_adaptive_thresholds: bool = False,
        **kwargs,
    ):
        _check_choice("box_reg_loss_type", box_reg_loss_type, BOX_LOSSES)
        _check_choice("box_reg_normalizer", box_reg_normalizer, BOX_NORMALIZERS)
        elementwise = box_reg_loss_type in ("smooth_l1", "balanced_l1")
        if carl and not elementwise:
            raise ValueError(f"carl=True needs box_reg_loss_type 'smooth_l1' or 'balanced_l1', "
                             f"got {box_reg_loss_type!r}")
        if box_reg_normalizer == "positives" and not elementwise:
            raise ValueError(f"box_reg_normalizer='positives' needs box_reg_loss_type "
                             f"'smooth_l1' or 'balanced_l1', got {box_reg_loss_type!r}")
        if balanced_l1_alpha <= 0:
            raise ValueError(f"balanced_l1_alpha={balanced_l1_alpha!r} must be > 0")
        if balanced_l1_beta <= 0:
            raise ValueError(f"balanced_l1_beta={balanced_l1_beta!r} must be > 0")
        _check_nonneg("balanced_l1_gamma", balanced_l1_gamma)
        _check_nonneg("carl_k", carl_k)
        _check_unit("carl_bias", carl_bias)
        _check_nonneg("guided_w_cls", guided_w_cls)
        super().__init__(input_shape, box_reg_loss_type=box_reg_loss_type, **kwargs)
        # Newer detectron2 offers sigmoid / federated classification; these losses are softmax.
        for flag in ("use_sigmoid_ce", "use_fed_loss"):
            if getattr(self, flag, False):
                raise ValueError(f"BalancedFastRCNNOutputLayers needs a softmax classifier; "
                                 f"{flag}=True is not supported")
        self.balanced_l1_alpha = float(balanced_l1_alpha)
        self.balanced_l1_gamma = float(balanced_l1_gamma)
        self.balanced_l1_beta = float(balanced_l1_beta)
        self.box_reg_normalizer = box_reg_normalizer
        self.carl = bool(carl)
        self.carl_k = float(carl_k)
        self.carl_bias = float(carl_bias)
        self.guided_loss = bool(guided_loss)
        self.guided_w_cls = float(guided_w_cls)
        self.prior_init = bool(prior_init)
        self.class_adaptive_thresholds = bool(class_adaptive_thresholds)
        if self.class_adaptive_thresholds:
            self.register_buffer(
                "class_score_thresh",
                torch.full((self.num_classes,), float(self.test_score_thresh)),
            )

    @classmethod
    def from_config(cls, cfg, input_shape):  # yacs configs: detectron2's behaviour
        return super().from_config(cfg, input_shape)

    # ---- Sampling-Free initialisation -------------------------------------------------------
    @torch.no_grad()
    def apply_softmax_prior(self, fg_fraction: float) -> Tuple[float, float]:
        """Optimal bias initialisation (SPEC 1.8): foreground biases 0 and background bias
        ``log(C (1 - f) / f)``, so that with (near-)zero weights the initial softmax gives
        ``p(class j) = f / C`` for every foreground class and ``p(bg) = 1 - f``
        (:func:`balanced_det.ops.softmax_prior_bias` derives it). ``f = N_f / N`` of the ROI
        head's samples. Returns ``(fg_bias, bg_bias)``."""
        fg, bg = softmax_prior_bias(fg_fraction, self.num_classes)
        bias = self.cls_score.bias
        bias[: self.num_classes] = fg
        bias[self.num_classes] = bg
        return fg, bg

    @torch.no_grad()
    def set_class_thresholds(self, fg_fraction: float, class_counts: Sequence[int]) -> torch.Tensor:
        """``theta_j = f N_j / sum_k N_k`` into ``class_score_thresh`` (SPEC 1.8). A class
        without training instances gets the smallest threshold of the seen classes."""
        if not self.class_adaptive_thresholds:
            raise ValueError("set_class_thresholds needs class_adaptive_thresholds=True")
        if len(class_counts) != self.num_classes:
            raise ValueError(f"class_counts has {len(class_counts)} entries, the predictor has "
                             f"{self.num_classes} classes")
        theta = class_adaptive_thresholds(fg_fraction, class_counts)
        self.class_score_thresh.copy_(theta.to(self.class_score_thresh.device))
        return self.class_score_thresh

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

    def _elementwise_box_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.box_reg_loss_type == "balanced_l1":
            return balanced_l1_loss(pred, target, self.balanced_l1_alpha, self.balanced_l1_gamma,
                                    self.balanced_l1_beta, reduction="none")
        return smooth_l1_loss(pred, target, self.smooth_l1_beta, reduction="none")

    def _box_normalizer(self, num_rois: int, num_fg: int, box_dim: int) -> float:
        if self.box_reg_normalizer == "positives":
            return float(max(num_fg * box_dim, 1))
        return float(max(num_rois, 1))

    def losses(self, predictions, proposals):
        """``loss_cls`` (weighted / guided if configured), ``loss_box_reg``, and ``loss_carl``
        with ``carl=True``. See the class docstring."""
        scores, proposal_deltas = predictions
        with _float32_math(scores):
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

            weights = None
            if len(proposals) and all(p.has("cls_weights") for p in proposals):
                weights = cat([p.cls_weights for p in proposals], dim=0).float()
            if weights is None:
                loss_cls = cross_entropy(scores, gt_classes, reduction="mean")
            elif num_rois == 0:
                loss_cls = scores.sum() * 0.0
            else:
                ce = F.cross_entropy(scores, gt_classes, reduction="none")
                loss_cls = (weights * ce).sum() / num_rois

            if self.box_reg_loss_type in ("smooth_l1", "balanced_l1"):
                fg_inds, fg_pred, fg_target = self._fg_regression(
                    proposal_boxes, gt_boxes, proposal_deltas, gt_classes)
                elem = self._elementwise_box_loss(fg_pred, fg_target)
                norm = self._box_normalizer(num_rois, fg_inds.numel(), proposal_boxes.shape[1])
                loss_box_reg = elem.sum() / norm
            else:
                fg_inds = elem = None
                loss_box_reg = self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas,
                                                 gt_classes)
            losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}

            if self.carl:
                losses["loss_carl"] = self._carl(scores, proposal_deltas, gt_classes, fg_inds,
                                                 elem, num_rois)
            losses = {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

            if self.guided_loss:
                has_fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
                r = guided_loss_ratio(losses["loss_box_reg"], loss_cls, 1.0, has_fg.any())
                losses["loss_cls"] = (self.guided_w_cls * r * loss_cls
                                      * self.loss_weight.get("loss_cls", 1.0))
                put_tensor_scalars(**{"fast_rcnn/guided_ratio": r})
        return losses

    def _carl(self, scores, deltas, gt_classes, fg_inds, elem, num_rois):
        """CARL (SPEC 1.7): normaliser = number of sampled ROIs (mmdet's ``avg_factor``)."""
        if fg_inds.numel() == 0:
            return 0.0 * (scores.sum() + deltas.sum())
        probs = F.softmax(scores, dim=1)[fg_inds, gt_classes[fg_inds]]  # not detached
        c = carl_weights(probs, self.carl_k, self.carl_bias)
        return (c * elem.reshape(fg_inds.numel(), -1).sum(dim=1)).sum() / float(max(num_rois, 1))

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
        """detectron2's inference; with ``class_adaptive_thresholds`` the per-class thresholds
        replace ``test_score_thresh`` (one vectorised comparison per image)."""
        if not self.class_adaptive_thresholds:
            return super().inference(predictions, proposals)
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        out = [
            _inference_single_image(b, s.float(), p.image_size, self.class_score_thresh,
                                    self.test_nms_thresh, self.test_topk_per_image)
            for b, s, p in zip(boxes, scores, proposals)
        ]
        return [x[0] for x in out], [x[1] for x in out]


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
class BalancedROIHeads(StandardROIHeads):
    """``StandardROIHeads`` with a choice of sampler and per-sample weights (module docstring).

    Args (in addition to ``StandardROIHeads``'s; ``batch_size_per_image`` and
    ``positive_fraction`` keep their meaning for every sampler except ``none``):
        sampler: one of ``random`` (default), ``ohem``, ``libra``, ``pisa``, ``none``.
        isr_p: ISR-P weights on the positives (SPEC 1.5), any sampler; ``None`` (default) =
            on with ``sampler="pisa"`` only. Needs a predictor with per-sample weights
            (:class:`BalancedFastRCNNOutputLayers`).
        isr_p_gamma, isr_p_beta: 2.0, 0.0.
        isr_n: with ``sampler="pisa"``, select and weight negatives by ISR-N / Score-HLR
            (SPEC 1.6); ``False`` = random negatives with weight 1.
        isr_n_gamma, isr_n_beta, isr_n_score_thresh, isr_n_iou_thresh: 0.5, 0.0, 0.05, 0.5.
        libra_floor_thr, libra_floor_fraction, libra_num_bins: -1 (no floor), 0.0, 3
            (SPEC 1.3; see :func:`balanced_det.ops.iou_balanced_neg_sample` for the two mmdet
            behaviours that are deliberately not reproduced).
        ohem_nms_thresh: ``None`` (default, as mmdet) or the paper's 0.7: NMS with the loss as
            score before the top-k (SPEC 1.2).

    Reading of the methods in detectron2's structure:

    * Candidates are the proposals plus the appended GT boxes (``proposal_append_gt``);
      labels come from ``proposal_matcher`` exactly as in ``StandardROIHeads``; ignored
      proposals (label -1) are never sampled.
    * ``ohem``: per image ``k_pos = int(B * positive_fraction)`` hardest positives and
      ``B - min(k_pos, #positives)`` hardest negatives by the per-ROI cross entropy of one
      no-grad box-head forward over all labelled proposals of the batch (mmdet's
      ``OHEMSampler``).
    * ``libra``: ``k_pos`` instance-balanced positives, then ``B - #sampled positives``
      IoU-balanced negatives by their max IoU with the image's GTs.
    * ``pisa``: ``k_pos`` random positives; ISR-N over one no-grad box-head forward of all
      negatives of the batch: per image the top ``B - #sampled positives`` negatives by
      Score-HLR, weights renormalised over the selected negatives with their (no-grad)
      background cross entropy (mmdet's ``ScoreHLRSampler``). No negative above the score
      threshold: random negatives, weights 1.
    * ISR-P after the training forward: IoU of each positive's regressed box (delta of its GT
      class) with its GT, GT ids unique over the batch (cumulative offsets, not mmdet's
      colliding ``last_max_gt``), weights renormalised with the positives' cross entropy.
    * ``none``: every proposal with label >= 0, no subsampling.

    The extra box-head forward of OHEM / ISR-N uses the same pooler, box head and predictor as
    training (train mode, no grad), over all images at once.

    Analysis hook: :attr:`sample_recorder` (``None`` by default: one attribute test per
    training step, nothing computed or kept). Set it to a callable
    ``recorder(proposals, predictions)`` and every training ``_forward_box`` calls it with the
    sampled proposals (``label_and_sample_proposals``'s ``Instances``: ``proposal_boxes``,
    ``gt_classes``, ``gt_boxes`` = the matched GT also for background, and ``cls_weights``
    after ISR-P when the sampler weights samples) and the box predictor's
    ``(scores, deltas)`` of that forward, before the losses. ``tools/analysis.py samplers``
    uses it to plot IoU vs classification loss of the samples; the recorder must not modify
    its arguments.
    """

    #: ``None`` or ``recorder(proposals, predictions)``; see the class docstring.
    sample_recorder: Optional[Callable[[List[Instances], Tuple[torch.Tensor, torch.Tensor]],
                                       None]] = None

    @configurable
    def __init__(
        self,
        *,
        sampler: str = "random",
        isr_p: Optional[bool] = None,
        isr_p_gamma: float = 2.0,
        isr_p_beta: float = 0.0,
        isr_n: bool = True,
        isr_n_gamma: float = 0.5,
        isr_n_beta: float = 0.0,
        isr_n_score_thresh: float = 0.05,
        isr_n_iou_thresh: float = 0.5,
        libra_floor_thr: float = -1.0,
        libra_floor_fraction: float = 0.0,
        libra_num_bins: int = 3,
        ohem_nms_thresh: Optional[float] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_choice("sampler", sampler, ROI_SAMPLERS)
        for name, value in (("isr_p_gamma", isr_p_gamma), ("isr_n_gamma", isr_n_gamma)):
            _check_nonneg(name, value)
        for name, value in (("isr_p_beta", isr_p_beta), ("isr_n_beta", isr_n_beta),
                            ("isr_n_score_thresh", isr_n_score_thresh),
                            ("libra_floor_fraction", libra_floor_fraction),
                            ("positive_fraction", self.positive_fraction)):
            _check_unit(name, value)
        _check_unit("isr_n_iou_thresh", isr_n_iou_thresh, open_low=True)
        if ohem_nms_thresh is not None:
            _check_unit("ohem_nms_thresh", ohem_nms_thresh, open_low=True)
        if not (isinstance(libra_num_bins, int) and libra_num_bins >= 1):
            raise ValueError(f"libra_num_bins={libra_num_bins!r} must be an integer >= 1")
        if not (isinstance(libra_floor_thr, (int, float)) and libra_floor_thr < 1):
            raise ValueError(f"libra_floor_thr={libra_floor_thr!r} must be < 1 (-1: no floor)")
        if not (isinstance(self.batch_size_per_image, int) and self.batch_size_per_image >= 1):
            raise ValueError(f"batch_size_per_image={self.batch_size_per_image!r} must be >= 1")
        self.sampler = sampler
        self.isr_p = (sampler == "pisa") if isr_p is None else bool(isr_p)
        self.isr_n = bool(isr_n) and sampler == "pisa"
        if (self.isr_p or self.isr_n) and not getattr(self.box_predictor,
                                                     "supports_sample_weights", False):
            raise ValueError(
                f"ISR weights (sampler={sampler!r}, isr_p={self.isr_p}) need a box predictor "
                f"that takes per-sample weights, e.g. BalancedFastRCNNOutputLayers; got "
                f"{type(self.box_predictor).__name__}")
        self.isr_p_gamma, self.isr_p_beta = float(isr_p_gamma), float(isr_p_beta)
        self.isr_n_gamma, self.isr_n_beta = float(isr_n_gamma), float(isr_n_beta)
        self.isr_n_score_thresh = float(isr_n_score_thresh)
        self.isr_n_iou_thresh = float(isr_n_iou_thresh)
        self.libra_floor_thr = float(libra_floor_thr)
        self.libra_floor_fraction = float(libra_floor_fraction)
        self.libra_num_bins = int(libra_num_bins)
        self.ohem_nms_thresh = ohem_nms_thresh

    @classmethod
    def from_config(cls, cfg, input_shape):  # yacs configs: detectron2's behaviour
        return super().from_config(cfg, input_shape)

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, images, features: Dict[str, torch.Tensor], proposals: List[Instances],
                targets: Optional[List[Instances]] = None):
        """``StandardROIHeads.forward``; in training the sampler also sees the features (OHEM
        and ISR-N run the box head over candidates)."""
        if not self.training:
            return super().forward(images, features, proposals, targets)
        del images
        assert targets, "'targets' argument is required during training"
        proposals = self.label_and_sample_proposals(proposals, targets, features=features)
        del targets
        losses = self._forward_box(features, proposals)
        losses.update(self._forward_mask(features, proposals))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        if not self.training:
            return super()._forward_box(features, proposals)
        feats = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(feats, [x.proposal_boxes for x in proposals])
        box_features = self.box_head(box_features)
        predictions = self.box_predictor(box_features)
        del box_features
        if self.isr_p:
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

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances],
                                   features: Optional[Dict[str, torch.Tensor]] = None
                                   ) -> List[Instances]:
        """Match proposals (+ appended GTs) to targets and sample with ``self.sampler``.

        Returns the sampled proposals with detectron2's fields (``gt_classes``, ``gt_*``) and,
        when used, ``cls_weights`` (per-sample classification weights, float32) and ``gt_uid``
        (GT id unique over the batch, -1 for background; for ISR-P).
        """
        if self.sampler in ("ohem", "pisa") and features is None and (
                self.sampler == "ohem" or self.isr_n):
            raise ValueError(f"sampler={self.sampler!r} runs the box head over candidate "
                             "proposals: pass features= to label_and_sample_proposals")
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)

        matches = []
        for p, t in zip(proposals, targets):
            iou = pairwise_iou(t.gt_boxes, p.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            matches.append((iou, matched_idxs, matched_labels))

        if self.sampler == "random":
            picks = []
            for (_, mi, ml), t in zip(matches, targets):  # detectron2's sampler, same RNG use
                idx, _ = self._sample_proposals(mi, ml, t.gt_classes)
                picks.append((idx, None))
        else:
            labels = [self._labels(mi, ml, t.gt_classes)
                      for (_, mi, ml), t in zip(matches, targets)]
            picks = getattr(self, f"_sample_{self.sampler}")(proposals, targets, matches, labels,
                                                            features)

        out, num_fg, num_bg = [], [], []
        gt_offset = 0
        for p, t, (iou, mi, ml), (idx, weights) in zip(proposals, targets, matches, picks):
            lab = self._labels(mi, ml, t.gt_classes)[idx]
            sp = p[idx]
            sp.gt_classes = lab
            if len(t) > 0:
                tgt = mi[idx]
                for name, value in t.get_fields().items():
                    if name.startswith("gt_") and not sp.has(name):
                        sp.set(name, value[tgt])
            if self.isr_p:
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

    def _num_pos_expected(self) -> int:
        return int(self.batch_size_per_image * self.positive_fraction)

    def _masks(self, lab):
        pos = (lab >= 0) & (lab != self.num_classes)
        neg = lab == self.num_classes
        return pos, neg

    def _sample_none(self, proposals, targets, matches, labels, features):
        return [(nonzero_tuple(lab >= 0)[0], None) for lab in labels]

    def _sample_libra(self, proposals, targets, matches, labels, features):
        picks = []
        for (iou, mi, _), lab in zip(matches, labels):
            pos, neg = self._masks(lab)
            pos_c, neg_c = nonzero_tuple(pos)[0], nonzero_tuple(neg)[0]
            pos_idx = pos_c[instance_balanced_pos_sample(mi[pos_c], self._num_pos_expected())]
            num_neg = self.batch_size_per_image - pos_idx.numel()
            max_iou = (iou.max(dim=0).values if iou.shape[0] > 0
                       else torch.zeros(lab.numel(), device=lab.device))
            neg_idx = neg_c[iou_balanced_neg_sample(
                max_iou[neg_c], num_neg, self.libra_floor_thr, self.libra_floor_fraction,
                self.libra_num_bins)]
            picks.append((torch.cat([pos_idx, neg_idx]), None))
        return picks

    def _predict_no_grad(self, features, boxes: List[Boxes]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The box head over ``boxes`` (one list entry per image), float32 outputs."""
        feats = [features[f] for f in self.box_in_features]
        x = self.box_head(self.box_pooler(feats, boxes))
        scores, deltas = self.box_predictor(x)
        return scores.float(), deltas.float()

    def _sample_ohem(self, proposals, targets, matches, labels, features):
        cands = [nonzero_tuple(lab >= 0)[0] for lab in labels]
        boxes = [p.proposal_boxes[c] for p, c in zip(proposals, cands)]
        scores, _ = self._predict_no_grad(features, boxes)
        cand_labels = cat([lab[c] for lab, c in zip(labels, cands)], dim=0)
        with _float32_math(scores):
            losses = F.cross_entropy(scores, cand_labels, reduction="none")
        k_pos = self._num_pos_expected()
        picks = []
        for c, b, lab_c, loss in zip(cands, boxes, cand_labels.split([len(c) for c in cands]),
                                     losses.split([len(c) for c in cands])):
            is_pos = lab_c != self.num_classes
            num_pos = min(int(is_pos.sum()), k_pos)  # one sync per image: the negative count
            keep = ohem_topk(loss, is_pos, k_pos, self.batch_size_per_image - num_pos,
                             nms_boxes=b.tensor if self.ohem_nms_thresh is not None else None,
                             nms_thresh=self.ohem_nms_thresh)
            picks.append((c[keep], None))
        return picks

    def _sample_pisa(self, proposals, targets, matches, labels, features):
        pos_picks, neg_cands = [], []
        for lab in labels:
            pos, neg = self._masks(lab)
            pos_picks.append(random_choice(pos, self._num_pos_expected()))
            neg_cands.append(nonzero_tuple(neg)[0])
        num_negs = [self.batch_size_per_image - p.numel() for p in pos_picks]
        if not self.isr_n:
            picks = []
            for pos_idx, neg_c, k in zip(pos_picks, neg_cands, num_negs):
                neg_idx = neg_c[random_choice(torch.ones_like(neg_c, dtype=torch.bool), k)]
                idx = torch.cat([pos_idx, neg_idx])
                picks.append((idx, torch.ones(idx.numel(), device=idx.device)))
            return picks

        boxes = [p.proposal_boxes[c] for p, c in zip(proposals, neg_cands)]
        scores, deltas = self._predict_no_grad(features, boxes)
        with _float32_math(scores):
            log_p = F.log_softmax(scores, dim=1)
            fg_probs = log_p[:, : self.num_classes].exp()
            bg_ce = -log_p[:, self.num_classes]
            top = fg_probs.argmax(dim=1)
            box_dim = len(self.box_predictor.box2box_transform.weights)
            if deltas.shape[1] != box_dim:
                deltas = deltas.view(-1, self.num_classes, box_dim)[
                    torch.arange(top.numel(), device=top.device), top]
            all_boxes = (cat([b.tensor for b in boxes], dim=0) if boxes
                         else deltas.new_zeros(0, 4))
            decoded = self.box_predictor.box2box_transform.apply_deltas(deltas, all_boxes)
        lens = [len(c) for c in neg_cands]
        picks, w_all, n_valid = [], [], []
        for pos_idx, neg_c, k, probs_i, boxes_i, ce_i in zip(
                pos_picks, neg_cands, num_negs, fg_probs.split(lens), decoded.split(lens),
                bg_ce.split(lens)):
            sel, w = isr_n_select(probs_i, boxes_i, k, self.isr_n_score_thresh,
                                  self.isr_n_iou_thresh, self.isr_n_gamma, self.isr_n_beta)
            w = renormalize_to_loss(w, ce_i[sel])
            n_valid.append((probs_i.amax(dim=1) > self.isr_n_score_thresh).sum()
                           if probs_i.numel() else torch.zeros((), device=probs_i.device))
            w_all.append(w)
            idx = torch.cat([pos_idx, neg_c[sel]])
            weights = torch.cat([torch.ones(pos_idx.numel(), device=w.device), w])
            picks.append((idx, weights))
        w_cat = cat(w_all, dim=0)
        if w_cat.numel():
            put_tensor_scalars(**{
                "roi_head/isr_n_weight_mean": w_cat.mean(),
                "roi_head/isr_n_weight_max": w_cat.max(),
                "roi_head/isr_n_num_valid": torch.stack(n_valid).float().mean(),
            })
        return picks

    # ---- ISR-P ------------------------------------------------------------------------------
    @torch.no_grad()
    def _apply_isr_p(self, predictions, proposals: List[Instances]) -> None:
        """Set ISR-P weights (SPEC 1.5) on the positives' ``cls_weights`` (others keep theirs,
        or 1)."""
        if not proposals:
            return
        scores, deltas = predictions
        with _float32_math(scores):
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
                box_dim = boxes.shape[1]
                d = deltas[fg] if deltas.shape[1] == box_dim else \
                    deltas.view(-1, self.num_classes, box_dim)[fg, lab]
                pred = self.box_predictor.box2box_transform.apply_deltas(d, boxes)
                ious = matched_pairwise_iou(Boxes(pred), Boxes(gt_boxes))
                uid = cat([p.gt_uid for p in proposals], dim=0)[fg]
                ce = F.cross_entropy(scores[fg], lab, reduction="none")
                w = isr_p_weights(ious, uid, lab, ce, self.isr_p_gamma, self.isr_p_beta)
                weights[fg] = w
                put_tensor_scalars(**{"roi_head/isr_p_weight_mean": w.mean(),
                                      "roi_head/isr_p_weight_max": w.max()})
        for p, w in zip(proposals, weights.split([len(p) for p in proposals])):
            p.cls_weights = w

    # ---- Sampling-Free statistics -----------------------------------------------------------
    @property
    def needs_dataset_stats(self) -> bool:
        bp = self.box_predictor
        return bool(getattr(bp, "prior_init", False) or getattr(bp, "class_adaptive_thresholds",
                                                                False))

    def dataset_stats_key(self, anchor_key: Dict, num_proposals: int) -> Dict:
        m = self.proposal_matcher
        return {
            "reading": "roi_heads: anchors as initial proposals (v1)",
            "anchors": anchor_key,
            "num_proposals": int(num_proposals),
            "proposal_append_gt": bool(self.proposal_append_gt),
            "matcher": {"thresholds": [float(x) for x in m.thresholds[1:-1]],
                        "labels": [int(x) for x in m.labels],
                        "allow_low_quality_matches": bool(m.allow_low_quality_matches)},
        }

    def dataset_stats_counter(self, anchors_fn, num_proposals: int):
        """Counter of N_f / N for the softmax head (SPEC 1.8; our reading, the paper gives
        none for the ROI head).

        At the start of training the proposals are the untrained RPN's boxes, about a random
        subset of the anchors, plus the GT boxes detectron2 appends. So per image, with A
        anchors of which ``A_f`` are foreground and ``A_v`` not ignored under *this head's*
        ``proposal_matcher``, ``K = min(num_proposals, A)`` (the RPN's training post-NMS
        top-k) and G appended GTs::

            N_f = round(K * A_f / A) + G,     N = round(K * A_v / A) + G

        (rounded to whole proposals per image; G = 0 without ``proposal_append_gt``).
        ``anchors_fn(image_size)`` returns the RPN's anchors (Boxes) for an image size.
        """
        matcher = self.proposal_matcher
        append = bool(self.proposal_append_gt)

        def counter(image_size, gt_boxes, gt_classes):
            anchors = anchors_fn(image_size)
            a = len(anchors)
            k = min(int(num_proposals), a)
            g = int(gt_boxes.shape[0])
            if g == 0:
                fg, valid = 0, a if matcher.labels[0] != -1 else 0
            else:
                _, lab = matcher(pairwise_iou(Boxes(gt_boxes), anchors))
                fg, valid = int((lab == 1).sum()), int((lab >= 0).sum())
            extra = g if append else 0
            if a == 0:
                return extra, extra
            return int(round(k * fg / a)) + extra, int(round(k * valid / a)) + extra

        return counter

    def apply_dataset_stats(self, fg_fraction: float, class_counts: Sequence[int]) -> None:
        bp = self.box_predictor
        if getattr(bp, "prior_init", False):
            bp.apply_softmax_prior(fg_fraction)
        if getattr(bp, "class_adaptive_thresholds", False):
            bp.set_class_thresholds(fg_fraction, class_counts)
