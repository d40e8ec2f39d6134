"""Sampling-Free FCOS R50-FPN 1x on COCO 2017 (Chen et al., TIP 2021;
docs/methods/sampling_free.md). Reference AP 37.1 -> 37.6.

Differs from fcos_R_50_FPN_1x only in cls_loss=SigmoidBCELoss() (no focal loss),
guided_loss=GuidedLoss() (L_reg = mean of the box and centerness losses), prior_init=True
(bias from the
training-set foreground fraction of points under this model's FCOS assignment) and
class_adaptive_thresholds=True: see common/models/dense_methods.py.
"""
from ..common.models.dense_methods import sampling_free_fcos
from .fcos_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

sampling_free_fcos(model)
