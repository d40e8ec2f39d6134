"""Libra (Balanced FPN + Balanced L1) RetinaNet, EfficientNet-Lite0-FPN, synthetic data, CPU.

Differs from retinanet_effnet_lite0_FPN.py (same data, anchors, schedule and seed) only in
the method's knobs: libra_retinanet() in common/models/dense_methods.py.
"""
from ..common.models.dense_methods import libra_retinanet
from .retinanet_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

libra_retinanet(model)
train.output_dir = "./output/synthetic/libra_retinanet_effnet_lite0_FPN"
