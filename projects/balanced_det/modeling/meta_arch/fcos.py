"""FCOS (Tian et al., ICCV 2019) on detectron2's ``DenseDetector``.

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
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import Tensor, nn

from detectron2.layers import batched_nms
from detectron2.modeling import Backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances

from ...ops.points import centerness_target, fcos_assign, fcos_scale_ranges, grid_points
from ...utils.events import put_tensor_scalars

__all__ = ["FCOS", "flatten_levels", "decode_ltrb"]


def flatten_levels(maps: List[Tensor]) -> Tensor:
    """[(N, K, H_l, W_l)] -> (N, sum_l H_l W_l, K), level-major then row-major."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


def decode_ltrb(points: Tensor, ltrb: Tensor) -> Tensor:
    """Boxes (..., 4) XYXY from points (R, 2) and distances (..., R, 4)."""
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


class FCOS(DenseDetector):
    """FCOS detector. Constructor arguments are plain values, settable from LazyConfig.

    Args:
        backbone: a detectron2 Backbone (e.g. an FPN) with the ``head_in_features`` levels.
        head: an :class:`FCOSStyleHead` over those levels.
        num_classes: number of foreground classes.
        center_sampling_radius: radius, in strides, of the centre region of a box.
        focal_loss_alpha, focal_loss_gamma: focal loss parameters.
        loss_normalizer_init, loss_normalizer_momentum: EMA of the positive count
            (detectron2's FCOS: 300, 0.9).
        test_score_thresh, test_topk_candidates, test_nms_thresh, max_detections_per_image:
            inference filtering (per level: threshold then top-k; then NMS over levels).
        anchor_offset: position of a point inside its cell (0.5 = centre).
    """

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
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= loss_normalizer_momentum < 1.0:
            raise ValueError(f"loss_normalizer_momentum must be in [0, 1), got {loss_normalizer_momentum}")
        self.num_classes = num_classes
        shapes = backbone.output_shape()
        missing = [f for f in self.head_in_features if f not in shapes]
        if missing:
            raise ValueError(f"head_in_features {missing} not in backbone outputs {list(shapes)}")
        self.strides = [shapes[f].stride for f in self.head_in_features]
        self.center_sampling_radius = float(center_sampling_radius)
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.loss_normalizer_momentum = loss_normalizer_momentum
        self.register_buffer("loss_normalizer", torch.tensor(float(loss_normalizer_init)))
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.anchor_offset = anchor_offset

    # ------------------------------------------------------------------ shared pieces
    def points(self, features: List[Tensor]) -> Tuple[Tensor, Tensor, List[int]]:
        return grid_points([f.shape[-2:] for f in features], self.strides, self.anchor_offset,
                           device=features[0].device)

    def predicted_ltrb(self, box_reg: List[Tensor], strides: Tensor) -> Tensor:
        """(N, R, 4) distances in pixels, float32."""
        return F.relu(flatten_levels(box_reg).float()) * strides[None, :, None]

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
        return self.losses(points, strides, predictions, gt_labels, gt_boxes)

    def losses(self, points, strides, predictions, gt_labels, gt_boxes) -> Dict[str, Tensor]:
        logits = flatten_levels(predictions["logits"]).float()  # N x R x C
        ctr_logits = flatten_levels(predictions["quality"]).float()[..., 0]  # N x R
        ltrb = self.predicted_ltrb(predictions["box_reg"], strides)
        pos = gt_labels < self.num_classes  # N x R
        num_pos = pos.sum()
        normalizer = self.update_loss_normalizer(num_pos)
        put_tensor_scalars(num_pos_anchors=num_pos.float() / max(len(gt_labels), 1))

        target = F.one_hot(gt_labels, self.num_classes + 1)[..., : self.num_classes].to(logits.dtype)
        loss_cls = sigmoid_focal_loss(logits, target, alpha=self.focal_loss_alpha,
                                      gamma=self.focal_loss_gamma, reduction="sum")

        pred_boxes = decode_ltrb(points, ltrb)
        unit = pred_boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
        safe_gt = torch.where(pos[..., None], gt_boxes, unit)
        loss_box = (giou_loss(pred_boxes, safe_gt, reduction="none") * pos).sum()

        gt_ltrb = torch.cat([points - safe_gt[..., :2], safe_gt[..., 2:] - points], dim=-1)
        ctr_target = torch.where(pos, centerness_target(gt_ltrb), torch.zeros_like(ctr_logits))
        loss_ctr = (F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="none")
                    * pos).sum()
        return {
            "loss_fcos_cls": loss_cls / normalizer,
            "loss_fcos_loc": loss_box / normalizer,
            "loss_fcos_ctr": loss_ctr / normalizer,
        }

    # ------------------------------------------------------------------ inference
    def scores(self, predictions: Dict[str, List[Tensor]]) -> Tensor:
        """(N, R, C) detection scores, float32."""
        cls = flatten_levels(predictions["logits"]).float().sigmoid()
        ctr = flatten_levels(predictions["quality"]).float().sigmoid()
        return torch.sqrt(cls * ctr)

    def forward_inference(self, images: ImageList, features: List[Tensor],
                          predictions: Dict[str, List[Tensor]]):
        points, strides, counts = self.points(features)
        scores = self.scores(predictions)
        boxes = decode_ltrb(points, self.predicted_ltrb(predictions["box_reg"], strides))
        return [
            self.inference_single_image(boxes[i], scores[i], counts, images.image_sizes[i])
            for i in range(len(images))
        ]

    def score_thresholds(self, scores: Tensor) -> Tensor:
        """Per-class score thresholds (C,); a single global one by default."""
        return scores.new_full((scores.shape[-1],), self.test_score_thresh)

    def inference_single_image(self, boxes: Tensor, scores: Tensor, counts: List[int],
                               image_size: Tuple[int, int]) -> Instances:
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
