"""DW-FCOS: an FCOS-style dense detector trained with Dual Weighting (Li et al., "A Dual
Weighting Label Assignment Scheme for Object Detection", CVPR 2022; SPEC 4).

The head is :class:`~balanced_det.modeling.dense_heads.FCOSStyleHead` (GN towers) with

* classification logits (C), bias from prior 0.02,
* box distances ``ltrb = relu(Scale_l(x)) * stride``, regression conv bias 4.0,
* an objectness branch (the head's ``quality`` conv on the box tower, 1 channel) with no target
  of its own: it is trained only through the joint score ``s = sigmoid(cls) * sigmoid(obj)``,
* optionally (``FCOSStyleHead(box_refine=True)``) an 8-channel offset conv on the box tower for
  box refinement: each side of the coarse box map is re-sampled near its edge
  (:func:`balanced_det.ops.refine_ltrb`, ``torchvision.ops.deform_conv2d``).

Every point strictly inside a GT box, on every level, is a candidate of that GT (no scale
ranges, no centre sampling); each candidate gets a positive weight (consistency of ``s`` and
the box quality ``exp(-5 GIoU_loss)``, times a fixed Gaussian centre prior, sigma 1.11) and
every (point, class) a negative weight (1 except for candidates whose predicted box has IoU >=
0.5 with the GT), see :mod:`balanced_det.ops.dw` for the formulas. Losses
(``loss_cls_pos``, ``loss_loc``, ``loss_cls_neg``) are normalised by the number of GTs and by
``sum(1 - P_neg)``, both **averaged over processes** in distributed training (the reference's
``reduce_mean``) and clamped so that the global sums are >= 1, so that DDP's gradient
averaging yields exactly the single-process loss of the global batch.

Box refinement, read from the reference (strongwolf/DW ``DWHead.forward_single``): the refined
distances *replace* the coarse ones everywhere (DW weights, losses and inference); the coarse
boxes get no loss of their own and are trained through the refinement (deform_conv2d passes
gradients to both the sampled values and the sampling positions).

Inference (reference test config): score ``sigmoid(cls) * sigmoid(obj)`` (no square root),
threshold 0.05, 1000 candidates per level, class-wise NMS 0.6, 100 detections.

Memory and speed: the DW weights are computed only on the (point, GT) pairs where the point
lies inside the box (one ``nonzero`` per image, its only host sync), not on dense (P, G)
matrices; with more than ``gt_chunk_size`` GTs in an image the pairs are found chunk by chunk
(transient memory O(P x gt_chunk_size), kept for backward O(pairs); the localisation term of
each chunk is then recomputed in backward). The default 256 covers every COCO image in one
chunk. See :mod:`balanced_det.ops.dw`. The loop over GTs of the reference is gone: the only
Python loops are over the images of the batch and the pyramid levels.

Differences from the reference (all deliberate, see :mod:`balanced_det.ops.dw`): a point in
the bags of two GTs of the same class takes the minimum negative weight (the reference: the
last GT written); detectron2's FPN (ReLU before P7 only; mmdet's ``relu_before_extra_convs``
also puts one before P6) and detectron2's points at cell centres (as the reference).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.modeling import Backbone
from detectron2.structures import ImageList, Instances

from ...ops.box_refine import refine_ltrb
from ...ops.dw import dw_image_terms, dw_losses
from ...utils.events import put_tensor_scalars
from .fcos import DensePointDetector, check_range, decode_ltrb, flatten_levels

__all__ = ["DWFCOS", "reduce_mean"]


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def reduce_mean(t: Tensor) -> Tensor:
    """Mean over processes (sum all-reduce / world size); identity without distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


class DWFCOS(DensePointDetector):
    """DW-FCOS detector. Constructor arguments are plain values, settable from LazyConfig.

    Args:
        backbone: a detectron2 Backbone with the ``head_in_features`` levels (P3-P7).
        head: an :class:`FCOSStyleHead` built with ``prior_prob=0.02``, ``box_bias_init=4.0``
            (and ``box_refine=True`` for the refine variant: the detector refines whenever the
            head outputs ``box_offsets``).
        num_classes: number of foreground classes.
        center_prior_sigma: sigma of the fixed Gaussian centre prior, in strides (1.11).
        pos_loss_weight: weight of the positive terms (the reference's 0.25).
        gt_chunk_size: at most this many GTs per chunk of the (P, G) weight computation
            (``None``: all at once); bounds the memory for images with many GTs.
        test_score_thresh, test_topk_candidates, test_nms_thresh, max_detections_per_image:
            inference filtering (0.05, 1000 per level, 0.6, 100).
        anchor_offset: position of a point inside its cell (0.5).
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Optional[Sequence[str]] = None,
        num_classes: int,
        center_prior_sigma: float = 1.11,
        pos_loss_weight: float = 0.25,
        gt_chunk_size: Optional[int] = 256,
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
        self.center_prior_sigma = check_range("center_prior_sigma", center_prior_sigma, 0.0,
                                              low_open=True)
        self.pos_loss_weight = check_range("pos_loss_weight", pos_loss_weight, 0.0,
                                           low_open=True)
        if gt_chunk_size is not None and (int(gt_chunk_size) != gt_chunk_size
                                          or gt_chunk_size < 1):
            raise ValueError(
                f"gt_chunk_size must be an integer >= 1 or None, got {gt_chunk_size!r}")
        self.gt_chunk_size = None if gt_chunk_size is None else int(gt_chunk_size)

    # ------------------------------------------------------------------ boxes and scores
    def box_distances(self, predictions: Dict[str, List[Tensor]], strides: Tensor) -> Tensor:
        """(N, R, 4) distances in pixels, float32: ``relu(reg) * stride``, refined with the
        head's ``box_offsets`` when it has them."""
        if "box_offsets" not in predictions:
            return self.predicted_ltrb(predictions["box_reg"], strides)
        refined = []
        for reg, off, s in zip(predictions["box_reg"], predictions["box_offsets"], self.strides):
            coarse = F.relu(reg.float()) * s
            refined.append(refine_ltrb(coarse, off.float(), s, self.anchor_offset))
        return flatten_levels(refined)

    def scores(self, predictions: Dict[str, List[Tensor]]) -> Tensor:
        """(N, R, C) joint scores ``sigmoid(cls) * sigmoid(obj)``, float32."""
        cls = flatten_levels(predictions["logits"]).float().sigmoid()
        obj = flatten_levels(predictions["quality"]).float().sigmoid()
        return cls * obj

    # ------------------------------------------------------------------ training
    def forward_training(self, images: ImageList, features: List[Tensor],
                         predictions: Dict[str, List[Tensor]], gt_instances: List[Instances]):
        points, strides, _ = self.points(features)
        with torch.autocast(device_type=points.device.type, enabled=False):
            scores = self.scores(predictions)
            boxes = decode_ltrb(points, self.box_distances(predictions, strides))
            return self.losses(scores, boxes, points, strides, gt_instances)

    def losses(self, scores: Tensor, pred_boxes: Tensor, points: Tensor, strides: Tensor,
               gt_instances: List[Instances]) -> Dict[str, Tensor]:
        """DW losses of a batch.

        Args:
            scores: (N, R, C) joint scores (with grad); pred_boxes: (N, R, 4) decoded boxes.
            points: (R, 2); strides: (R,).
            gt_instances: per image ``gt_boxes``, ``gt_classes``.
        Returns:
            ``loss_cls_pos``, ``loss_loc``, ``loss_cls_neg`` (float32).
        """
        terms = [
            dw_image_terms(scores[i], pred_boxes[i], points, strides,
                           inst.gt_boxes.tensor, inst.gt_classes,
                           sigma=self.center_prior_sigma, gt_chunk_size=self.gt_chunk_size)
            for i, inst in enumerate(gt_instances)
        ]
        local = torch.stack([torch.stack([t.num_gt for t in terms]).sum(),
                             torch.stack([t.neg_norm for t in terms]).sum()])
        num_gt, neg_norm = reduce_mean(local).unbind(0)
        put_tensor_scalars(
            dw_num_gt=local[0],
            dw_pos_weight_sum=torch.stack([t.pos_weight for t in terms]).sum(),
            dw_neg_weight_deficit=local[1],  # sum(1 - P_neg): the negative normaliser
        )
        return dw_losses(terms, num_gt=num_gt, neg_norm=neg_norm,
                         pos_loss_weight=self.pos_loss_weight, min_norm=1.0 / _world_size())
