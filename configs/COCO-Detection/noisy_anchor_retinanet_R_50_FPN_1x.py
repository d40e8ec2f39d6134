"""Noisy-anchor RetinaNet R50-FPN 1x on COCO 2017 (Li et al., "Learning from Noisy Anchors
for One-stage Object Detection", CVPR 2020; docs/methods/noisy_anchor.md). The authors' code
reports 36.5 -> 38.6 AP (val2017).

Differs from retinanet_R_50_FPN_1x only in the model class (BalancedRetinaNet) with
anchor_assigner=NoisyAnchorAssigner(topk=30, alpha=0.75),
cls_loss=SoftTargetFocalLoss(alpha=0.5, gamma=2) and box_reg_loss=SmoothL1Loss(beta=0.1):
see common/models/dense_methods.py. Kept from the detectron2 baseline: the schedule (16
images, lr 0.01, 90k iterations; the authors trained 8 images, lr 0.005, 180k iterations,
the same number of epochs) and the EMA positive-count normaliser.
"""
from ..common.models.dense_methods import noisy_anchor_retinanet
from .retinanet_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

noisy_anchor_retinanet(model, topk=30, alpha=0.75)
