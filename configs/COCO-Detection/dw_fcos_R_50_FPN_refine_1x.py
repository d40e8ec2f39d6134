"""DW-FCOS R50-FPN 1x on COCO 2017 with box refinement (docs/methods/dw.md). Reference AP 42.1.

Differs from dw_fcos_R_50_FPN_1x only in head.box_refine=True: a 3x3 conv on the regression
tower predicts 8 offsets, each side of the coarse box is re-sampled near its edge
(torchvision deform_conv2d); the refined boxes replace the coarse ones in the DW loss and at
inference (as the reference).
"""
from .dw_fcos_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.head.box_refine = True
