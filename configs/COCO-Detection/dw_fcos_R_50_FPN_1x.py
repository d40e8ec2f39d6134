"""DW-FCOS R50-FPN 1x on COCO 2017, without box refinement (Li et al., "A Dual Weighting
Label Assignment Scheme for Object Detection", CVPR 2022; docs/methods/dw.md). Reference AP 41.5.

Differs from fcos_R_50_FPN_1x in the method (common/models/dense_methods.py: DWFCOS, head
prior 0.02, regression bias 4.0, objectness instead of centerness, inference score
cls * obj, NMS 0.6) and in the schedule, which follows the reference: LR steps at epochs 8
and 11 of 12 (iterations 60000 and 82500 of 90000 at 16 images) instead of 60000/80000;
warm-up 1000 iterations, LR 0.01, weight decay 1e-4, none on norms (as the baseline).
"""
from ..common.models.dense_methods import dw_fcos
from ..common.schedules import multistep
from .fcos_R_50_FPN_1x import dataloader, model, optimizer, train

dw_fcos(model, box_refine=False)
lr_multiplier = multistep(milestones=(8, 11, 12), warmup_fraction=1000 / 90000)
