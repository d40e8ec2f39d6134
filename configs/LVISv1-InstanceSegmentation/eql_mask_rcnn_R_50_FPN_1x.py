"""Equalization Loss Mask R-CNN R50-FPN 1x on LVIS v1 (docs/methods/eql.md): lambda = 0.0011
(815 tail classes), everything else as mask_rcnn_R_50_FPN_1x.py; eql() in
common/models/balanced_rcnn.py."""
from ..common.models.balanced_rcnn import eql
from .mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

eql(model, lambda_=0.0011)
train.output_dir = "./output/lvis_v1/eql_mask_rcnn_R_50_FPN_1x"
