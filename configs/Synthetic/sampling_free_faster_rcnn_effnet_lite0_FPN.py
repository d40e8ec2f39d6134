"""Sampling-Free Faster R-CNN, EfficientNet-Lite0-FPN, synthetic data, CPU
(docs/methods/sampling_free.md).

Differs from faster_rcnn_effnet_lite0_FPN.py (same data, schedule and seed) in the method's
parts only: sampling_free() in common/models/balanced_rcnn.py (no sampling, guided losses,
optimal bias init and class-adaptive thresholds from dataset statistics counted once before
training, a few seconds, then cached) with twice the baseline's training proposals (1000
instead of 500 per image, as COCO's 2000 vs 1000). Every proposal trains the box head
(ROIAlign's backward on the CPU dominates): about 2.4x the baseline's time per iteration.
"""
from ..common.models.balanced_rcnn import sampling_free
from .faster_rcnn_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

sampling_free(model, num_train_proposals=1000)
train.output_dir = "./output/synthetic/sampling_free_faster_rcnn_effnet_lite0_FPN"
