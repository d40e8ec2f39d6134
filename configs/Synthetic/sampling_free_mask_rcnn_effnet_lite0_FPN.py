"""Sampling-Free Mask R-CNN, EfficientNet-Lite0-FPN, synthetic data with masks, CPU
(docs/methods/sampling_free.md).

Differs from mask_rcnn_effnet_lite0_FPN.py (same data, schedule and seed) as
sampling_free_faster_rcnn_effnet_lite0_FPN.py differs from its baseline:
sampling_free() in common/models/balanced_rcnn.py. The mask head is unchanged and trains on
every foreground proposal. About 2x the baseline's time per
iteration.
"""
from ..common.models.balanced_rcnn import sampling_free
from .mask_rcnn_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

sampling_free(model, num_train_proposals=1000)
train.output_dir = "./output/synthetic/sampling_free_mask_rcnn_effnet_lite0_FPN"
