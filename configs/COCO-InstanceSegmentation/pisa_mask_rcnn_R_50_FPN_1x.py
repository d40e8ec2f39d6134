"""PISA Mask R-CNN R50-FPN 1x (docs/methods/pisa.md). Reference COCO AP box 37.3 -> 39.1,
mask 34.2 -> 35.2. The mask head is unchanged (trained on the sampled positives).

Same method parts and differing knobs as COCO-Detection/pisa_faster_rcnn_R_50_FPN_1x: ROI
ISR-P + ISR-N (ScoreHLRSampler), CARL, Smooth L1 beta 1.0 box loss (baseline L1), 2000 RPN
proposals pre/post NMS in training and test (baseline 2000/1000 pre, 1000/1000 post).
"""
from ..common.models.balanced_rcnn import pisa
from .mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

pisa(model, pre_nms_topk=(2000, 2000), post_nms_topk=(2000, 2000))
