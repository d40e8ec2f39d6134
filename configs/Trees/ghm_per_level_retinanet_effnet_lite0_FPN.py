"""GHM-C + GHM-R RetinaNet with the losses called once per FPN level (mmdetection's call),
EfficientNet-Lite0-FPN, trees data, CPU.

Differs from ghm_retinanet_effnet_lite0_FPN.py only in ``per_level=True``: each level's loss is
normalised by its own element count and the five are summed, and the gradient-density EMA is
updated once per level (docs/methods/ghm.md, "Differences from the reference").
"""
from ..common.models.dense_methods import ghm_retinanet
from .retinanet_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

ghm_retinanet(model, per_level=True)
train.output_dir = "./output/trees/ghm_per_level_retinanet_effnet_lite0_FPN"
