"""Libra R-CNN: Faster R-CNN R50-FPN 1x (docs/methods/libra.md). Reference COCO box AP 38.3.

Differs from faster_rcnn_R_50_FPN_1x in the method's three levels only:
* sample: instance-balanced positives + IoU-balanced negatives (3 bins, floor_thr -1);
* feature: Balanced FPN (non-local refine at P4 = index 2 of P2-P6);
* objective: Balanced L1 box loss (alpha 0.5, gamma 1.5, beta 1.0) instead of L1.
The RPN keeps detectron2's random sampling.
"""
from ..common.models.balanced_rcnn import libra
from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

libra(model, refine_level=2)
