"""PISA Mask R-CNN, EfficientNet-Lite0-FPN, synthetic data with masks, CPU (docs/methods/pisa.md).

Differs from mask_rcnn_effnet_lite0_FPN.py (same data, schedule and seed) as
pisa_faster_rcnn_effnet_lite0_FPN.py differs from its baseline: pisa() in
common/models/balanced_rcnn.py. The mask head is unchanged. About 1.4x the
baseline's time per iteration.
"""
from ..common.models.balanced_rcnn import pisa
from .mask_rcnn_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

pisa(model, pre_nms_topk=(1000, 1000), post_nms_topk=(1000, 1000))
train.output_dir = "./output/synthetic/pisa_mask_rcnn_effnet_lite0_FPN"
