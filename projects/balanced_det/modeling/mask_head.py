"""A Mask R-CNN mask head whose loss takes per-ROI weights (USW's ``exp(-s_mask)``), and the
per-ROI mask loss it and USW's inputs share. See docs/methods/usw.md."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.layers import cat
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead, mask_rcnn_inference
from detectron2.structures import Instances

from ..ops.usw import usw_mask_loss
from ..utils.tensor_math import float32_math

__all__ = ["roi_mask_losses", "WeightedMaskRCNNConvUpsampleHead"]


def roi_mask_losses(pred_mask_logits: Tensor, instances: List[Instances]) -> Tensor:
    """(P,) per-ROI mask loss ``l_i``: the mean over the M x M pixels of the binary cross
    entropy between the GT-class mask logits (class-agnostic: the only channel) and the GT
    mask cropped to the proposal (detectron2's ``mask_rcnn_loss`` targets, whose loss is the
    mean of these). Float32, autocast off.

    Args:
        pred_mask_logits: (P, C or 1, M, M) for the foreground proposals of ``instances``
            (``proposal_boxes``, ``gt_classes``, ``gt_masks``), in their order.
    """
    agnostic = pred_mask_logits.size(1) == 1
    side = pred_mask_logits.size(2)
    gt_classes, gt_masks = [], []
    for inst in instances:  # one entry per image
        if len(inst) == 0:
            continue
        if not agnostic:
            gt_classes.append(inst.gt_classes.to(dtype=torch.int64))
        gt_masks.append(inst.gt_masks.crop_and_resize(inst.proposal_boxes.tensor, side)
                        .to(device=pred_mask_logits.device))
    with float32_math(pred_mask_logits):
        logits = pred_mask_logits.float()
        if not gt_masks:
            return logits.sum(dim=(1, 2, 3)) * 0.0  # (0,), attached to the logits
        target = cat(gt_masks, dim=0).to(torch.float32)
        if agnostic:
            logits = logits[:, 0]
        else:
            logits = logits[torch.arange(logits.size(0), device=logits.device), cat(gt_classes)]
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return bce.mean(dim=(1, 2))


class WeightedMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """detectron2's ``MaskRCNNConvUpsampleHead``; in training, when every instance carries a
    ``mask_loss_weight`` (per ROI, set by USW's box predictor), ``loss_mask = sum_i w_i l_i / P``
    (:func:`~balanced_det.ops.usw.usw_mask_loss`), otherwise detectron2's mean BCE (the same
    value as ``mask_rcnn_loss``; its mask visualisation is not drawn). Inference unchanged."""

    def forward(self, x, instances: List[Instances]):
        x = self.layers(x)
        if not self.training:
            mask_rcnn_inference(x, instances)
            return instances
        weighted = bool(instances) and all(p.has("mask_loss_weight") for p in instances)
        weights = cat([p.mask_loss_weight for p in instances]) if weighted else None
        return {"loss_mask": usw_mask_loss(roi_mask_losses(x, instances), weights)
                * self.loss_weight}
