"""Sampling-Free RetinaNet, EfficientNet-Lite0-FPN, synthetic data, CPU: BCE, guided loss,
bias init, class-adaptive thresholds.

Differs from retinanet_effnet_lite0_FPN.py (same data, anchors, schedule and seed) only in
the method's knobs: sampling_free_retinanet() in common/models/dense_methods.py.
"""
from ..common.models.dense_methods import sampling_free_retinanet
from .retinanet_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

sampling_free_retinanet(model)
train.output_dir = "./output/synthetic/sampling_free_retinanet_effnet_lite0_FPN"
