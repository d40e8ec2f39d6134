"""Libra R-CNN, EfficientNet-Lite0-FPN, trees data, CPU (docs/methods/libra.md).

Differs from faster_rcnn_effnet_lite0_FPN.py (same data, schedule and seed) only in the
method's parts: libra() in common/models/balanced_rcnn.py (instance-balanced positives,
IoU-balanced negatives, Balanced FPN refined at P4 = index 1 of Lite0's P3-P6, Balanced L1).
About the baseline's time per iteration (measured 1.0x).
"""
from ..common.models.balanced_rcnn import libra
from .faster_rcnn_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

libra(model, refine_level=1)
train.output_dir = "./output/trees/libra_faster_rcnn_effnet_lite0_FPN"
