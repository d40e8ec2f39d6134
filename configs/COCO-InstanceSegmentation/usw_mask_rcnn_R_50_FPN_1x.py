"""USW (Unified Sample Weighting network) Mask R-CNN R50-FPN 1x (docs/methods/usw.md), the
authors' SWNMask.

Method parts as COCO-Detection/usw_faster_rcnn_R_50_FPN_1x, plus the mask: the network's fifth
input is each positive's mask loss (one no-grad mask-head forward) and its third score
weights the mask loss, ``L_mask = sum_i exp(-s_mask,i) l_i / P`` + ``0.5 mean(s_mask)``
(WeightedMaskRCNNConvUpsampleHead). Own Adam (LR 1e-3) for the network; Smooth L1 beta 1.0 box
loss (baseline L1): usw() in common/models/balanced_rcnn.py.
"""
from ..common.models.balanced_rcnn import usw
from .mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

optimizer = usw(model, optimizer)
