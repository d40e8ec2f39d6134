"""FCOS (Tian et al., ICCV 2019) on detectron2's ``DenseDetector``, with Sampling-Free options.

Semantics follow detectron2's FCOS (centre sampling radius 1.5, FCOS scale ranges, smallest
box wins, focal loss, GIoU loss, centerness BCE, all divided by an EMA of the positive count,
inference score ``sqrt(sigmoid(cls) * sigmoid(ctr))``), with these differences:

* works on images without boxes (v0.6 crashes), and the per-level decoding honours its
  threshold/top-k arguments (v0.6 ignores them);
* no host synchronisation in the training step (the positive-count EMA is a tensor buffer,
  so it is also saved in checkpoints and restored on resume);
* points sit at cell centres (offset 0.5, as the FCOS paper), box distances are
  ``relu(scale_l * x) * stride`` with a learnable per-level scale, and the head is
  :class:`~balanced_det.modeling.dense_heads.FCOSStyleHead` (GroupNorm that builds on
  current torch);
* loss maths runs in float32 under autocast.

Sampling-Free FCOS (Chen et al., SPEC 1.8) is a set of options of the same class:
``cls_loss_type="bce"`` (plain sigmoid BCE over all points, divided by the same positive-count
normaliser as the other losses), ``guided_loss=True``, ``sampling_free_init=True`` (optimal
classification bias from the dataset statistics, counted with this detector's own FCOS rule)
and ``class_adaptive_thresholds=True`` (per-class inference thresholds from the statistics).

Shared pieces for the other point-based detectors (DW-FCOS) are in :class:`DensePointDetector`
and :class:`SamplingFreeStatsMixin` (also used by the RetinaNet).
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import Tensor, nn

from detectron2.layers import batched_nms
from detectron2.modeling import Backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances

from ...ops.points import centerness_target, fcos_assign, fcos_scale_ranges, grid_points
from ...ops.sampling_free import (
    class_adaptive_thresholds as _class_adaptive_thresholds,
    guided_classification_loss,
    guided_loss_ratio,
    sigmoid_prior_bias,
)
from ...utils.events import put_tensor_scalars

__all__ = [
    "FCOS",
    "DensePointDetector",
    "SamplingFreeStatsMixin",
    "flatten_levels",
    "decode_ltrb",
    "check_choice",
    "check_range",
]


def flatten_levels(maps: List[Tensor]) -> Tensor:
    """[(N, K, H_l, W_l)] -> (N, sum_l H_l W_l, K), level-major then row-major."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


def decode_ltrb(points: Tensor, ltrb: Tensor) -> Tensor:
    """Boxes (..., 4) XYXY from points (R, 2) and distances (..., R, 4)."""
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        raise ValueError(
            f"{name}={value!r} is not supported; valid names: {', '.join(map(repr, choices))}"
        )
    return value


def check_range(name: str, value: float, low: Optional[float] = None,
                high: Optional[float] = None, low_open: bool = False,
                high_open: bool = False) -> float:
    """``float(value)`` if it lies in the interval, else a ValueError naming the value."""
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v


class SamplingFreeStatsMixin(metaclass=ABCMeta):
    """Sampling-Free parts that need the dataset statistics (SPEC 1.8), for sigmoid dense
    detectors; implements :class:`balanced_det.stats.DatasetStatsUser`.

    * ``sampling_free_init``: the classification conv bias becomes
      ``-log((1 - pi) / pi)``, ``pi = (N_f / N) / C``;
    * ``class_adaptive_thresholds``: the buffer ``class_score_thresholds`` (C,) becomes
      ``theta_j = (N_f / N) N_j / sum_k N_k`` and replaces ``test_score_thresh`` at inference.
      It is a persistent buffer, so an evaluation from a checkpoint uses the thresholds of
      the training set even without recounting.

    Neither enabled: ``dataset_stats_counters()`` returns ``{}`` and no statistics are counted.
    Subclasses provide ``stats_counter_name``, :meth:`count_foreground` (the detector's own
    assignment rule on one image, no network forward), :meth:`stats_key_settings` and
    :meth:`classification_bias`.
    """

    stats_counter_name = "dense"

    def _init_sampling_free(self, sampling_free_init: bool, class_adaptive_thresholds: bool,
                            num_classes: int, test_score_thresh: float) -> None:
        self.sampling_free_init = bool(sampling_free_init)
        self.class_adaptive_thresholds = bool(class_adaptive_thresholds)
        if self.class_adaptive_thresholds:
            self.register_buffer(
                "class_score_thresholds", torch.full((num_classes,), float(test_score_thresh))
            )

    # DatasetStatsUser ------------------------------------------------------------------
    def dataset_stats_counters(self) -> Dict[str, Any]:
        if not (self.sampling_free_init or self.class_adaptive_thresholds):
            return {}
        return {self.stats_counter_name: self.count_foreground}

    def dataset_stats_key(self) -> Dict[str, Any]:
        return {self.stats_counter_name: self.stats_key_settings()}

    @torch.no_grad()
    def apply_dataset_stats(self, stats) -> None:
        fg = stats[self.stats_counter_name].fg_fraction
        if self.sampling_free_init:
            bias = self.classification_bias()
            bias.fill_(sigmoid_prior_bias(fg, self.num_classes))
        if self.class_adaptive_thresholds:
            counts = list(stats.class_counts)
            if len(counts) != self.num_classes:
                raise ValueError(
                    f"dataset statistics have {len(counts)} class counts, the model has "
                    f"num_classes={self.num_classes}")
            theta = _class_adaptive_thresholds(fg, counts)
            self.class_score_thresholds.copy_(theta.to(self.class_score_thresholds))

    # provided by each detector ------------------------------------------------------------
    @abstractmethod
    def count_foreground(self, image_size: Tuple[int, int], gt_boxes: Tensor,
                         gt_classes: Tensor) -> Tuple[int, int]:
        """(N_f, N) of one training image with the detector's own assignment rule."""

    @abstractmethod
    def stats_key_settings(self) -> Dict[str, Any]:
        """The assignment settings the counts depend on (part of the statistics cache key)."""

    @abstractmethod
    def classification_bias(self) -> Tensor:
        """The bias tensor of the classification conv (set by ``sampling_free_init``)."""

    def per_class_score_thresholds(self, like: Tensor, num_classes: int,
                                   global_thresh: float) -> Tensor:
        """(C,) thresholds: the class-adaptive ones when enabled, else ``global_thresh``."""
        if self.class_adaptive_thresholds:
            return self.class_score_thresholds.to(device=like.device, dtype=like.dtype)
        return like.new_full((num_classes,), global_thresh)


class DensePointDetector(DenseDetector, metaclass=ABCMeta):
    """Point-based dense detector base (FCOS, DW-FCOS): points, box decoding and inference.

    Subclasses implement :meth:`scores` (N, R, C) and the training step; :meth:`box_distances`
    (N, R, 4) may be overridden (DW's box refinement).
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Optional[Sequence[str]] = None,
        num_classes: int,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        anchor_offset: float = 0.5,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ):
        super().__init__(backbone, head, list(head_in_features) if head_in_features else None,
                         pixel_mean=pixel_mean, pixel_std=pixel_std)
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if int(test_topk_candidates) < 1:
            raise ValueError(f"test_topk_candidates must be >= 1, got {test_topk_candidates!r}")
        if int(max_detections_per_image) < 1:
            raise ValueError(
                f"max_detections_per_image must be >= 1, got {max_detections_per_image!r}")
        check_range("test_nms_thresh", test_nms_thresh, 0.0, 1.0)
        check_range("anchor_offset", anchor_offset, 0.0, 1.0)
        self.num_classes = int(num_classes)
        shapes = backbone.output_shape()
        missing = [f for f in self.head_in_features if f not in shapes]
        if missing:
            raise ValueError(f"head_in_features {missing} not in backbone outputs {list(shapes)}")
        self.strides = [shapes[f].stride for f in self.head_in_features]
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = int(test_topk_candidates)
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = int(max_detections_per_image)
        self.anchor_offset = anchor_offset

    # ------------------------------------------------------------------ shared pieces
    def points(self, features: List[Tensor]) -> Tuple[Tensor, Tensor, List[int]]:
        return grid_points([f.shape[-2:] for f in features], self.strides, self.anchor_offset,
                           device=features[0].device)

    def points_for_image_size(
        self, image_size: Tuple[int, int]
    ) -> Tuple[Tensor, Tensor, List[int]]:
        """The points of a (padded) input of ``image_size``, without a network: level sizes
        ``ceil(size / stride)`` (what stride-2 convs and the FPN produce on padded inputs)."""
        h, w = image_size
        sizes = [(-(-h // s), -(-w // s)) for s in self.strides]
        return grid_points(sizes, self.strides, self.anchor_offset)

    def predicted_ltrb(self, box_reg: List[Tensor], strides: Tensor) -> Tensor:
        """(N, R, 4) distances in pixels, float32."""
        return F.relu(flatten_levels(box_reg).float()) * strides[None, :, None]

    def box_distances(self, predictions: Dict[str, List[Tensor]], strides: Tensor) -> Tensor:
        """(N, R, 4) predicted distances (l, t, r, b) in pixels, float32."""
        return self.predicted_ltrb(predictions["box_reg"], strides)

    # ------------------------------------------------------------------ inference
    @abstractmethod
    def scores(self, predictions: Dict[str, List[Tensor]]) -> Tensor:
        """(N, R, C) detection scores, float32."""

    def forward_inference(self, images: ImageList, features: List[Tensor],
                          predictions: Dict[str, List[Tensor]]):
        points, strides, counts = self.points(features)
        with torch.autocast(device_type=points.device.type, enabled=False):
            scores = self.scores(predictions)
            boxes = decode_ltrb(points, self.box_distances(predictions, strides))
        return [
            self.inference_single_image(boxes[i], scores[i], counts, images.image_sizes[i])
            for i in range(len(images))
        ]

    def score_thresholds(self, scores: Tensor) -> Tensor:
        """Per-class score thresholds (C,); a single global one by default."""
        return scores.new_full((scores.shape[-1],), self.test_score_thresh)

    def inference_single_image(self, boxes: Tensor, scores: Tensor, counts: List[int],
                               image_size: Tuple[int, int]) -> Instances:
        """Per level: the top-k (point, class) scores, kept when above their class threshold;
        then class-wise NMS over all levels and the ``max_detections_per_image`` best."""
        thresholds = self.score_thresholds(scores)
        kept_boxes, kept_scores, kept_classes = [], [], []
        start = 0
        for n in counts:  # pyramid levels
            s = scores[start: start + n]  # n x C
            b = boxes[start: start + n]
            start += n
            flat = s.reshape(-1)
            k = min(self.test_topk_candidates, flat.numel())
            top, idx = flat.topk(k)
            keep = top > thresholds[idx % s.shape[1]]
            top, idx = top[keep], idx[keep]
            kept_scores.append(top)
            kept_classes.append(idx % s.shape[1])
            kept_boxes.append(b[idx // s.shape[1]])
        boxes_all = Boxes(torch.cat(kept_boxes))
        boxes_all.clip(image_size)
        scores_all, classes_all = torch.cat(kept_scores), torch.cat(kept_classes)
        keep = batched_nms(boxes_all.tensor, scores_all, classes_all, self.test_nms_thresh)
        keep = keep[: self.max_detections_per_image]
        result = Instances(image_size)
        result.pred_boxes = boxes_all[keep]
        result.scores = scores_all[keep]
        result.pred_classes = classes_all[keep]
        return result


class FCOS(SamplingFreeStatsMixin, DensePointDetector):
    """FCOS detector. Constructor arguments are plain values, settable from LazyConfig.

    Args:
        backbone: a detectron2 Backbone (e.g. an FPN) with the ``head_in_features`` levels.
        head: an :class:`FCOSStyleHead` over those levels.
        num_classes: number of foreground classes.
        center_sampling_radius: radius, in strides, of the centre region of a box (> 0).
        focal_loss_alpha, focal_loss_gamma: focal loss parameters.
        loss_normalizer_init, loss_normalizer_momentum: EMA of the positive count
            (detectron2's FCOS: 300, 0.9; momentum 0 = the batch's positive count).
        cls_loss_type: ``"focal"`` (FCOS) or ``"bce"`` (Sampling-Free: plain sigmoid BCE over
            all points and classes, same normaliser).
        guided_loss: Sampling-Free guided loss: ``loss_fcos_cls`` becomes
            ``w_cls r L_cls`` with ``r = (w_reg mean(L_loc, L_ctr) / L_cls).detach()`` (the
            reference averages the non-classification FCOS losses), ``r = 1`` without
            foreground; ``loss_fcos_loc`` and ``loss_fcos_ctr`` are multiplied by ``w_reg``.
        guided_loss_w_reg, guided_loss_w_cls: its weights (1, 1 for one-stage detectors).
        sampling_free_init: classification bias from the dataset statistics (points counted
            with this detector's FCOS assignment), see :class:`SamplingFreeStatsMixin`.
        class_adaptive_thresholds: per-class inference thresholds from the statistics,
            applied to the detection score ``sqrt(sigmoid(cls) sigmoid(ctr))``.
        test_score_thresh, test_topk_candidates, test_nms_thresh, max_detections_per_image:
            inference filtering (per level: threshold then top-k; then NMS over levels).
        anchor_offset: position of a point inside its cell (0.5 = centre).
    """

    CLS_LOSS_TYPES = ("focal", "bce")
    stats_counter_name = "fcos_points"

    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Optional[Sequence[str]] = None,
        num_classes: int,
        center_sampling_radius: float = 1.5,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        loss_normalizer_init: float = 300.0,
        loss_normalizer_momentum: float = 0.9,
        cls_loss_type: str = "focal",
        guided_loss: bool = False,
        guided_loss_w_reg: float = 1.0,
        guided_loss_w_cls: float = 1.0,
        sampling_free_init: bool = False,
        class_adaptive_thresholds: bool = False,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        anchor_offset: float = 0.5,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ):
        super().__init__(
            backbone=backbone, head=head, head_in_features=head_in_features,
            num_classes=num_classes, test_score_thresh=test_score_thresh,
            test_topk_candidates=test_topk_candidates, test_nms_thresh=test_nms_thresh,
            max_detections_per_image=max_detections_per_image, anchor_offset=anchor_offset,
            pixel_mean=pixel_mean, pixel_std=pixel_std,
        )
        check_range("loss_normalizer_momentum", loss_normalizer_momentum, 0.0, 1.0,
                    high_open=True)
        check_range("loss_normalizer_init", loss_normalizer_init, 0.0, low_open=True)
        check_range("center_sampling_radius", center_sampling_radius, 0.0, low_open=True)
        check_range("focal_loss_gamma", focal_loss_gamma, 0.0)
        if focal_loss_alpha >= 0:  # fvcore: a negative alpha disables the weighting
            check_range("focal_loss_alpha", focal_loss_alpha, 0.0, 1.0)
        self.cls_loss_type = check_choice("cls_loss_type", cls_loss_type, self.CLS_LOSS_TYPES)
        self.guided_loss = bool(guided_loss)
        self.guided_loss_w_reg = check_range("guided_loss_w_reg", guided_loss_w_reg, 0.0,
                                             low_open=True)
        self.guided_loss_w_cls = check_range("guided_loss_w_cls", guided_loss_w_cls, 0.0,
                                             low_open=True)
        self.center_sampling_radius = float(center_sampling_radius)
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.loss_normalizer_momentum = loss_normalizer_momentum
        self.register_buffer("loss_normalizer", torch.tensor(float(loss_normalizer_init)))
        self._init_sampling_free(sampling_free_init, class_adaptive_thresholds, self.num_classes,
                                 test_score_thresh)

    def update_loss_normalizer(self, num_pos: Tensor) -> Tensor:
        """EMA of the positive count, as a tensor (no host sync); returns the new value."""
        if self.training:
            m = self.loss_normalizer_momentum
            new = self.loss_normalizer * m + num_pos.clamp(min=1).float() * (1 - m)
            self.loss_normalizer.copy_(new.detach())
        return self.loss_normalizer

    @torch.no_grad()
    def label_points(
        self, points: Tensor, strides: Tensor, counts: List[int], gt_instances: List[Instances]
    ) -> Tuple[Tensor, Tensor]:
        """Per image FCOS assignment. Returns labels (N, R) in [0, C] (C = background) and
        matched boxes (N, R, 4) (zeros for background)."""
        lower, upper = fcos_scale_ranges(strides, counts)
        labels, boxes = [], []
        for inst in gt_instances:
            gt = inst.gt_boxes.tensor.float()
            idx = fcos_assign(points, strides, lower, upper, gt, self.center_sampling_radius)
            pos = idx >= 0
            safe = idx.clamp(min=0)
            if gt.shape[0] == 0:
                labels.append(torch.full_like(idx, self.num_classes))
                boxes.append(points.new_zeros(points.shape[0], 4))
                continue
            labels.append(torch.where(pos, inst.gt_classes[safe], torch.full_like(idx, self.num_classes)))
            boxes.append(torch.where(pos[:, None], gt[safe], torch.zeros_like(gt[safe])))
        return torch.stack(labels), torch.stack(boxes)

    # ------------------------------------------------------------------ training
    def forward_training(self, images: ImageList, features: List[Tensor],
                         predictions: Dict[str, List[Tensor]], gt_instances: List[Instances]):
        points, strides, counts = self.points(features)
        gt_labels, gt_boxes = self.label_points(points, strides, counts, gt_instances)
        with torch.autocast(device_type=points.device.type, enabled=False):
            return self.losses(points, strides, predictions, gt_labels, gt_boxes)

    def losses(self, points, strides, predictions, gt_labels, gt_boxes) -> Dict[str, Tensor]:
        logits = flatten_levels(predictions["logits"]).float()  # N x R x C
        ctr_logits = flatten_levels(predictions["quality"]).float()[..., 0]  # N x R
        ltrb = self.box_distances(predictions, strides)
        pos = gt_labels < self.num_classes  # N x R
        num_pos = pos.sum()
        normalizer = self.update_loss_normalizer(num_pos)
        put_tensor_scalars(num_pos_anchors=num_pos.float() / max(len(gt_labels), 1))

        target = F.one_hot(gt_labels, self.num_classes + 1)[..., : self.num_classes].to(logits.dtype)
        if self.cls_loss_type == "focal":
            loss_cls = sigmoid_focal_loss(logits, target, alpha=self.focal_loss_alpha,
                                          gamma=self.focal_loss_gamma, reduction="sum")
        else:  # "bce": Sampling-Free, plain BCE over every point and class
            loss_cls = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")

        pred_boxes = decode_ltrb(points, ltrb)
        unit = pred_boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
        safe_gt = torch.where(pos[..., None], gt_boxes, unit)
        loss_box = (giou_loss(pred_boxes, safe_gt, reduction="none") * pos).sum()

        gt_ltrb = torch.cat([points - safe_gt[..., :2], safe_gt[..., 2:] - points], dim=-1)
        ctr_target = torch.where(pos, centerness_target(gt_ltrb), torch.zeros_like(ctr_logits))
        loss_ctr = (F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="none")
                    * pos).sum()
        losses = {
            "loss_fcos_cls": loss_cls / normalizer,
            "loss_fcos_loc": loss_box / normalizer,
            "loss_fcos_ctr": loss_ctr / normalizer,
        }
        if self.guided_loss:  # L = w_reg L_reg + w_cls r L_cls, r = (w_reg L_reg / L_cls).detach()
            for k in ("loss_fcos_loc", "loss_fcos_ctr"):
                losses[k] = self.guided_loss_w_reg * losses[k]
            reg = (losses["loss_fcos_loc"] + losses["loss_fcos_ctr"]) / 2
            has_fg = num_pos > 0
            put_tensor_scalars(guided_loss_ratio=guided_loss_ratio(
                reg, losses["loss_fcos_cls"], 1.0, has_fg))
            losses["loss_fcos_cls"] = guided_classification_loss(
                losses["loss_fcos_cls"], reg, 1.0, self.guided_loss_w_cls, has_fg)
        return losses

    # ------------------------------------------------------------------ inference
    def scores(self, predictions: Dict[str, List[Tensor]]) -> Tensor:
        """(N, R, C) detection scores ``sqrt(sigmoid(cls) sigmoid(ctr))``, float32."""
        cls = flatten_levels(predictions["logits"]).float().sigmoid()
        ctr = flatten_levels(predictions["quality"]).float().sigmoid()
        return torch.sqrt(cls * ctr)

    def score_thresholds(self, scores: Tensor) -> Tensor:
        return self.per_class_score_thresholds(scores, scores.shape[-1], self.test_score_thresh)

    # ------------------------------------------------------------------ Sampling-Free stats
    def count_foreground(self, image_size: Tuple[int, int], gt_boxes: Tensor,
                         gt_classes: Tensor) -> Tuple[int, int]:
        """(N_f, N) of one (padded) training image with this detector's FCOS assignment:
        every point is a valid sample (FCOS ignores none)."""
        points, strides, counts = self.points_for_image_size(image_size)
        lower, upper = fcos_scale_ranges(strides, counts)
        idx = fcos_assign(points, strides, lower, upper, gt_boxes.float().reshape(-1, 4),
                          self.center_sampling_radius)
        return int((idx >= 0).sum()), int(points.shape[0])

    def stats_key_settings(self) -> Dict[str, Any]:
        return {
            "rule": "fcos_assign (inside box, centre region, FCOS scale ranges 4s-8s)",
            "strides": list(self.strides),
            "center_sampling_radius": self.center_sampling_radius,
            "anchor_offset": float(self.anchor_offset),
        }

    def classification_bias(self) -> Tensor:
        return self.head.cls_score.bias
