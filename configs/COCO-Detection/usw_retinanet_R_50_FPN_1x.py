"""USW RetinaNet R50-FPN 1x on COCO 2017 (docs/methods/usw.md).

Differs from retinanet_R_50_FPN_1x in the model class (BalancedRetinaNet) with the weighting
network over every anchor (SampleWeightingNet: detached inputs, one classification score per
batch) and its own Adam optimizer (LR 1e-3, weight decay 1e-4) next to the baseline's SGD,
both on the baseline's LR schedule: usw_retinanet() in common/models/dense_methods.py.
Kept from the detectron2 baseline: Smooth L1 beta 0.1 (the authors: 0.11), the EMA
positive-count normaliser (the authors: the batch's positive count) and no clipping (the
authors: norm 35).
"""
from ..common.models.dense_methods import usw_retinanet
from .retinanet_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

optimizer = usw_retinanet(model, optimizer)
