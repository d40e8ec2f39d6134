"""Sampling-Free RetinaNet R50-FPN 1x on COCO 2017 (Chen et al., "Is Sampling Heuristics
Necessary in Training Deep Object Detectors?", TIP 2021; docs/methods/sampling_free.md).
Reference AP 36.4 -> 36.8.

Differs from retinanet_R_50_FPN_1x only in BalancedRetinaNet with cls_loss=SigmoidBCELoss()
(no focal loss), guided_loss=GuidedLoss(), prior_init=True (classification bias from the
training-set foreground fraction counted with this model's anchors and matcher before
training, cached as JSON) and class_adaptive_thresholds=True: see
common/models/dense_methods.py. Statistics: train.dataset_stats (max_images, seed, stats_file).
"""
from ..common.models.dense_methods import sampling_free_retinanet
from .retinanet_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

sampling_free_retinanet(model)
