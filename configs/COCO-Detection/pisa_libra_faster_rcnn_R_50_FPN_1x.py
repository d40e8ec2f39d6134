"""Cross-level combination: PISA sample weighting + Libra's Balanced FPN and Balanced L1.

Faster R-CNN R50-FPN 1x with
* sample level: PISA (ISR-P + ISR-N / Score-HLR sampling, CARL term), 2000 RPN proposals
  (pre/post NMS, train and test) as in pisa_faster_rcnn_R_50_FPN_1x;
* feature level: Balanced FPN (refine at P4);
* objective level: Balanced L1 box loss (alpha 0.5, gamma 1.5, beta 1.0), also inside CARL.
No published reference number; compare with pisa_ and libra_faster_rcnn_R_50_FPN_1x.
"""
from detectron2.config import LazyCall as L

from balanced_det.modeling.losses import BalancedL1Loss

from ..common.models.balanced_rcnn import balanced_fpn, pisa
from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

pisa(model, pre_nms_topk=(2000, 2000), post_nms_topk=(2000, 2000))
balanced_fpn(model, refine_level=2)
model.roi_heads.box_predictor.box_reg_loss = L(BalancedL1Loss)(alpha=0.5, gamma=1.5, beta=1.0)
