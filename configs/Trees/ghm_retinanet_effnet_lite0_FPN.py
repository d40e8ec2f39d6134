"""GHM-C + GHM-R RetinaNet, EfficientNet-Lite0-FPN, trees data, CPU.

Differs from retinanet_effnet_lite0_FPN.py (same data, anchors, schedule and seed) only in
the method's knobs: ghm_retinanet() in common/models/dense_methods.py.
"""
from ..common.models.dense_methods import ghm_retinanet
from .retinanet_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

ghm_retinanet(model)
train.output_dir = "./output/trees/ghm_retinanet_effnet_lite0_FPN"
