"""PISA Faster R-CNN, EfficientNet-Lite0-FPN, trees data, CPU (docs/methods/pisa.md).

Differs from faster_rcnn_effnet_lite0_FPN.py (same data, schedule and seed) in the method's
parts (ISR-P, ISR-N / Score-HLR negatives, CARL) and, as the COCO PISA config and mmdet,
Smooth L1 beta 1.0 box loss and twice the baseline's RPN proposals (post-NMS 1000 instead of
500, pre-NMS 1000 in training and test): pisa() in common/models/balanced_rcnn.py.
About 1.4x the baseline's time per iteration (ISR-N's box-head forward over the negatives).
"""
from ..common.models.balanced_rcnn import pisa
from .faster_rcnn_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

pisa(model, pre_nms_topk=(1000, 1000), post_nms_topk=(1000, 1000))
train.output_dir = "./output/trees/pisa_faster_rcnn_effnet_lite0_FPN"
