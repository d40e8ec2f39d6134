"""FL* RetinaNet (gamma 2, beta 1), EfficientNet-Lite0-FPN, trees data, CPU.

Differs from retinanet_effnet_lite0_FPN.py (same data, anchors, schedule and seed) only in
the method's knobs: fl_star_retinanet() in common/models/dense_methods.py.
"""
from ..common.models.dense_methods import fl_star_retinanet
from .retinanet_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

fl_star_retinanet(model, gamma=2.0, beta=1.0)
train.output_dir = "./output/trees/fl_star_retinanet_effnet_lite0_FPN"
