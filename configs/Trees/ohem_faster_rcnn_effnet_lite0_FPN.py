"""OHEM Faster R-CNN, EfficientNet-Lite0-FPN, trees data, CPU (docs/methods/ohem.md).

Differs from faster_rcnn_effnet_lite0_FPN.py (same data, schedule and seed) only in the ROI
sampler: ohem() in common/models/balanced_rcnn.py (hardest 64 positives / 192 negatives of
256 ROIs per image). The extra no-grad box-head forward over all proposals: about 1.2x
the baseline's time per iteration.
"""
from ..common.models.balanced_rcnn import ohem
from .faster_rcnn_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

ohem(model)
train.output_dir = "./output/trees/ohem_faster_rcnn_effnet_lite0_FPN"
