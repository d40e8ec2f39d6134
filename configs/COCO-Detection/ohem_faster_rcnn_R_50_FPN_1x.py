"""OHEM Faster R-CNN R50-FPN 1x (docs/methods/ohem.md).

Differs from faster_rcnn_R_50_FPN_1x only in the ROI sampler: per image the 128 positives and
384 negatives with the highest classification loss (one no-grad box-head forward over all
labelled proposals), no NMS de-duplication (mmdet's default; ``ohem_nms_thresh=0.7`` gives
the paper's).
"""
from ..common.models.balanced_rcnn import ohem
from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

ohem(model)
