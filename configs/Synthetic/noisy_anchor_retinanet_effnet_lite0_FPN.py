"""Noisy-anchor RetinaNet (top-30 candidates per GT, cleanliness alpha 0.75),
EfficientNet-Lite0-FPN, synthetic data, CPU.

Differs from retinanet_effnet_lite0_FPN.py (same data, anchors, schedule and seed) only in
the method's knobs: noisy_anchor_retinanet() in common/models/dense_methods.py.
"""
from ..common.models.dense_methods import noisy_anchor_retinanet
from .retinanet_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

noisy_anchor_retinanet(model, topk=30, alpha=0.75)
train.output_dir = "./output/synthetic/noisy_anchor_retinanet_effnet_lite0_FPN"
