"""GHM RetinaNet R50-FPN 1x on COCO 2017 (Li et al., "Gradient Harmonized Single-stage
Detector", AAAI 2019; docs/methods/ghm.md). Reference AP 36.5 -> 37.0 (mmdet).

Differs from retinanet_R_50_FPN_1x only in the model class (BalancedRetinaNet) with
cls_loss=GHMCLoss (30 bins, momentum 0.75) and box_reg_loss=GHMRLoss (mu 0.02, 10 bins,
momentum 0.7, weight 10): see common/models/dense_methods.py. GHM losses keep
their own normalisation (valid elements), one EMA update per iteration over all levels.
"""
from ..common.models.dense_methods import ghm_retinanet
from .retinanet_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

ghm_retinanet(model)
