"""DW-FCOS: an FCOS-style dense detector trained with Dual Weighting (Li et al., "A Dual
Weighting Label Assignment Scheme for Object Detection", CVPR 2022), optionally with box
refinement. The maths is :mod:`balanced_det.ops.dw` and :mod:`balanced_det.ops.box_refine`;
the reading of the reference code (what is a candidate, the weights, the normalisers averaged
over processes, refinement replacing the coarse boxes, inference) and the deliberate
differences are on docs/methods/dw.md. The only Python loops are over the images of a batch
and the pyramid levels.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.structures import ImageList, Instances

from ...ops.box_refine import refine_ltrb
from ...ops.dw import dw_image_terms, dw_losses
from ...ops.points import PointGrid, point_grid
from ...utils.checks import check_int, check_range
from ...utils.events import put_tensor_scalars
from ...utils.signature import with_base_signature
from ...utils.tensor_math import reduce_mean, world_size
from .fcos import DensePointDetector, decode_ltrb, flatten_levels

__all__ = ["DWFCOS"]


@with_base_signature
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
        **kwargs: :class:`DensePointDetector`'s (backbone, head, inference filtering: 0.05,
            1000 per level, NMS 0.6, 100 detections, ...).
    """

    def __init__(
        self,
        *,
        center_prior_sigma: float = 1.11,
        pos_loss_weight: float = 0.25,
        gt_chunk_size: Optional[int] = 256,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.center_prior_sigma = check_range("center_prior_sigma", center_prior_sigma, 0.0,
                                              low_open=True)
        self.pos_loss_weight = check_range("pos_loss_weight", pos_loss_weight, 0.0,
                                           low_open=True)
        self.gt_chunk_size = (None if gt_chunk_size is None
                              else check_int("gt_chunk_size", gt_chunk_size, 1))

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
        grid = point_grid([f.shape[-2:] for f in features], self.strides, self.anchor_offset,
                          device=points.device)
        with torch.autocast(device_type=points.device.type, enabled=False):
            scores = self.scores(predictions)
            boxes = decode_ltrb(points, self.box_distances(predictions, strides))
            return self.losses(scores, boxes, points, strides, gt_instances, grid=grid)

    def losses(self, scores: Tensor, pred_boxes: Tensor, points: Tensor, strides: Tensor,
               gt_instances: List[Instances],
               grid: Optional[PointGrid] = None) -> Dict[str, Tensor]:
        """DW losses of a batch.

        Args:
            scores: (N, R, C) joint scores (with grad); pred_boxes: (N, R, 4) decoded boxes.
            points: (R, 2); strides: (R,).
            gt_instances: per image ``gt_boxes``, ``gt_classes``.
            grid: the points' :class:`~balanced_det.ops.points.PointGrid` (bag pairs from cell
                ranges, :func:`~balanced_det.ops.dw.dw_image_terms`), or ``None``.
        Returns:
            ``loss_cls_pos``, ``loss_loc``, ``loss_cls_neg`` (float32).
        """
        terms = [
            dw_image_terms(scores[i], pred_boxes[i], points, strides,
                           inst.gt_boxes.tensor, inst.gt_classes,
                           sigma=self.center_prior_sigma, gt_chunk_size=self.gt_chunk_size,
                           grid=grid)
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
                         pos_loss_weight=self.pos_loss_weight, min_norm=1.0 / world_size())
