"""USW Mask R-CNN, EfficientNet-Lite0-FPN, synthetic data with masks, CPU (docs/methods/usw.md).

Differs from mask_rcnn_effnet_lite0_FPN.py (same data, schedule, clipping and seed) as
usw_faster_rcnn_effnet_lite0_FPN.py differs from its baseline, plus the mask-loss input and
weight of the network (the authors' SWNMask): usw() in common/models/balanced_rcnn.py.
"""
from ..common.models.balanced_rcnn import usw
from .mask_rcnn_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

optimizer = usw(model, optimizer)
train.output_dir = "./output/synthetic/usw_mask_rcnn_effnet_lite0_FPN"
