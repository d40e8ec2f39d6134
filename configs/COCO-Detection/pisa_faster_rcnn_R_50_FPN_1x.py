"""PISA Faster R-CNN R50-FPN 1x (docs/methods/pisa.md). Reference COCO box AP 36.4 -> 38.4.

Method parts: ISR-P weights on the positives (ISRPWeighting, gamma 2 / beta 0), ISR-N
Score-HLR negatives (ScoreHLRSampler, gamma 0.5 / beta 0, score threshold 0.05) and the CARL
loss term (k 1, bias 0.2). Knobs that also differ from faster_rcnn_R_50_FPN_1x, as in mmdet's PISA
configs (the reference numbers were obtained with them):
* box loss Smooth L1 with beta 1.0 (baseline: L1, smooth_l1_beta 0);
* RPN proposals: pre_nms_topk (2000, 2000) and post_nms_topk (2000, 2000) (baseline:
  (2000, 1000) and (1000, 1000)).
"""
from ..common.models.balanced_rcnn import pisa
from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

pisa(model, pre_nms_topk=(2000, 2000), post_nms_topk=(2000, 2000))
