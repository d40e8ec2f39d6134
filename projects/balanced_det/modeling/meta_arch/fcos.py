"""FCOS (Tian et al., ICCV 2019) on detectron2's ``DenseDetector``, with loss plug-ins.

Semantics follow detectron2's FCOS (centre sampling radius 1.5, FCOS scale ranges, smallest
box wins, focal loss, GIoU loss, centerness BCE, all divided by an EMA of the positive count,
inference score ``sqrt(sigmoid(cls) * sigmoid(ctr))``); the differences (images without
boxes, no host sync, points at cell centres, GN head, float32 losses) are listed in
docs/methods/fcos.md. Sampling-Free FCOS is a set of plug-ins of the same class
(``cls_loss=SigmoidBCELoss()``, ``guided_loss``, ``prior_init``, ``class_adaptive_thresholds``).
:class:`DensePointDetector` holds what FCOS and DW-FCOS share.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.layers import batched_nms
from detectron2.modeling import Backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances

from ...ops.points import centerness_target, fcos_assign, fcos_scale_ranges, grid_points
from ...utils.checks import check_int, check_plugin, check_range
from ...utils.events import put_tensor_scalars
from ...utils.signature import with_base_signature
from ..losses import (BoxRegressionLoss, ClassificationLoss, FocalLoss, GIoULoss, GuidedLoss,
                      call_loss)
from .dense import BalancedDenseMixin

__all__ = ["FCOS", "DensePointDetector", "flatten_levels", "decode_ltrb"]


def flatten_levels(maps: List[Tensor]) -> Tensor:
    """[(N, K, H_l, W_l)] -> (N, sum_l H_l W_l, K), level-major then row-major."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


def decode_ltrb(points: Tensor, ltrb: Tensor) -> Tensor:
    """Boxes (..., 4) XYXY from points (R, 2) and distances (..., R, 4)."""
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


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
        check_int("num_classes", num_classes, 1)
        check_int("test_topk_candidates", test_topk_candidates, 1)
        check_int("max_detections_per_image", max_detections_per_image, 1)
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


@with_base_signature
class FCOS(BalancedDenseMixin, DensePointDetector):
    """FCOS detector. Constructor arguments are plain values or plug-in objects.

    Args:
        backbone: a detectron2 Backbone (e.g. an FPN) with the ``head_in_features`` levels.
        head: an :class:`FCOSStyleHead` over those levels.
        num_classes: number of foreground classes.
        center_sampling_radius: radius, in strides, of the centre region of a box (> 0).
        focal_loss_alpha, focal_loss_gamma: the default classification loss (detectron2's).
        cls_loss: a :class:`~balanced_det.modeling.losses.ClassificationLoss` over all points
            and classes; ``None``: ``FocalLoss(focal_loss_alpha, focal_loss_gamma)``.
        box_reg_loss: a box loss on decoded boxes; ``None``: ``GIoULoss()``.
        loss_normalizer_init, loss_normalizer_momentum: EMA of the positive count (300, 0.9).
        guided_loss: a :class:`~balanced_det.modeling.losses.GuidedLoss`; ``L_reg`` is the
            mean of the box and centerness losses (as Sampling-Free's FCOS code).
        prior_init, class_adaptive_thresholds: Sampling-Free's dataset-statistics options
            (points counted with this detector's FCOS assignment; thresholds applied to the
            detection score).
        **kwargs: :class:`DensePointDetector`'s (backbone, head, inference filtering, ...).
    """

    stats_counter_name = "fcos_points"

    def __init__(
        self,
        *,
        center_sampling_radius: float = 1.5,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        cls_loss: Optional[ClassificationLoss] = None,
        box_reg_loss: Optional[BoxRegressionLoss] = None,
        loss_normalizer_init: float = 300.0,
        loss_normalizer_momentum: float = 0.9,
        guided_loss: Optional[GuidedLoss] = None,
        prior_init: bool = False,
        class_adaptive_thresholds: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.center_sampling_radius = check_range("center_sampling_radius",
                                                  center_sampling_radius, 0.0, low_open=True)
        self.cls_loss = check_plugin("cls_loss", cls_loss, ClassificationLoss,
                                       lambda: FocalLoss(focal_loss_alpha, focal_loss_gamma))
        self.box_reg_loss = check_plugin("box_reg_loss", box_reg_loss, BoxRegressionLoss,
                                           GIoULoss)
        if not self.box_reg_loss.on_boxes:
            raise ValueError(f"box_reg_loss={self.box_reg_loss!r} is not valid; FCOS regresses "
                             "boxes: expected a loss on boxes (GIoULoss)")
        self.guided_loss = check_plugin("guided_loss", guided_loss, GuidedLoss)
        self._init_dense_options(
            loss_normalizer_init=loss_normalizer_init,
            loss_normalizer_momentum=loss_normalizer_momentum, prior_init=prior_init,
            class_adaptive_thresholds=class_adaptive_thresholds,
            test_score_thresh=self.test_score_thresh)

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
        level_sizes = [m.shape[2] * m.shape[3] for m in predictions["logits"]]
        logits = flatten_levels(predictions["logits"]).float()  # N x R x C
        ctr_logits = flatten_levels(predictions["quality"]).float()[..., 0]  # N x R
        ltrb = self.box_distances(predictions, strides)
        pos = gt_labels < self.num_classes  # N x R
        num_pos = pos.sum()
        normalizer = self.update_loss_normalizer(num_pos)
        put_tensor_scalars(num_pos_anchors=num_pos.float() / max(len(gt_labels), 1))

        target = F.one_hot(gt_labels, self.num_classes + 1)[..., : self.num_classes].to(logits.dtype)
        pred_boxes = decode_ltrb(points, ltrb)
        unit = pred_boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
        safe_gt = torch.where(pos[..., None], gt_boxes, unit)
        gt_ltrb = torch.cat([points - safe_gt[..., :2], safe_gt[..., 2:] - points], dim=-1)
        ctr_target = torch.where(pos, centerness_target(gt_ltrb), torch.zeros_like(ctr_logits))
        loss_ctr = (F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="none")
                    * pos).sum()
        losses = {
            "loss_fcos_cls": call_loss(self.cls_loss, level_sizes, logits, target,
                                       normalizer=normalizer),
            "loss_fcos_loc": call_loss(self.box_reg_loss, level_sizes, pred_boxes, safe_gt,
                                       mask=pos, normalizer=normalizer),
            "loss_fcos_ctr": loss_ctr / normalizer,
        }
        if self.guided_loss is not None:  # L_reg: the mean of the box and centerness losses
            for k in ("loss_fcos_loc", "loss_fcos_ctr"):
                losses[k] = self.guided_loss.regression(losses[k])
            reg = (losses["loss_fcos_loc"] + losses["loss_fcos_ctr"]) / 2
            losses["loss_fcos_cls"], r = self.guided_loss.classification(
                losses["loss_fcos_cls"], reg, num_pos > 0)
            put_tensor_scalars(guided_loss_ratio=r)
        return losses

    # ------------------------------------------------------------------ inference
    def scores(self, predictions: Dict[str, List[Tensor]]) -> Tensor:
        """(N, R, C) detection scores ``sqrt(sigmoid(cls) sigmoid(ctr))``, float32."""
        cls = flatten_levels(predictions["logits"]).float().sigmoid()
        ctr = flatten_levels(predictions["quality"]).float().sigmoid()
        return torch.sqrt(cls * ctr)

    def score_thresholds(self, scores: Tensor) -> Tensor:
        return self.per_class_score_thresholds(scores, self.test_score_thresh)

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
