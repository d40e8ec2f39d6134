"""PISA RetinaNet R50-FPN 1x on COCO 2017 (Cao et al., "Prime Sample Attention in Object
Detection", CVPR 2020; docs/methods/pisa.md). Reference AP 35.6 -> 36.9 (mmdet).

Differs from retinanet_R_50_FPN_1x only in the model class (BalancedRetinaNet) and
positive_weighting=ISRPWeighting(gamma=2, beta=0) and carl=CARL(k=1, bias=0.2): see
common/models/dense_methods.py.
Kept from the detectron2 baseline: Smooth L1 beta 0.1 (mmdet's PISA config: 0.11) and the EMA
positive-count loss normaliser (mmdet: the batch positive count).
"""
from ..common.models.dense_methods import pisa_retinanet
from .retinanet_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

pisa_retinanet(model)
