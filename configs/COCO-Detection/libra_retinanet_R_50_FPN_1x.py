"""Libra RetinaNet R50-FPN 1x on COCO 2017 (Pang et al., "Libra R-CNN", CVPR 2019;
docs/methods/libra.md). Reference AP 37.6 (mmdet).

Differs from retinanet_R_50_FPN_1x only in: Balanced Feature Pyramid around the FPN
(non-local refine at P4 = index 1 of P3-P7) and Balanced L1 box loss (alpha 0.5, gamma 1.5,
beta 0.11) in BalancedRetinaNet: see common/models/dense_methods.py.
"""
from ..common.models.dense_methods import libra_retinanet
from .retinanet_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

libra_retinanet(model)
