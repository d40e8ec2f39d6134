"""USW RetinaNet, EfficientNet-Lite0-FPN, trees data, CPU (docs/methods/usw.md).

Differs from retinanet_effnet_lite0_FPN.py (same data, anchors, schedule, clipping and seed)
only in the method's parts (the weighting network over every anchor, trained by its own Adam,
LR 1e-3): usw_retinanet() in common/models/dense_methods.py.
"""
from ..common.models.dense_methods import usw_retinanet
from .retinanet_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

optimizer = usw_retinanet(model, optimizer)
train.output_dir = "./output/trees/usw_retinanet_effnet_lite0_FPN"
