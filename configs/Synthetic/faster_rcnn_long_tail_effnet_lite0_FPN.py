"""Faster R-CNN (detectron2's classes, softmax), EfficientNet-Lite0-FPN, on the long-tailed
synthetic shapes (synthetic_lt_train / synthetic_lt_val: the two rarest classes in about 4 %
and 2 % of the images, classes tagged rare / common / frequent): the baseline of
eql_faster_rcnn_effnet_lite0_FPN.py. Evaluated as LVIS models are (score threshold 1e-4, 300
detections per image), with AP_r / AP_c / AP_f. Same schedule and seed as
faster_rcnn_effnet_lite0_FPN.py.
"""
from .faster_rcnn_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.dataset.names = "synthetic_lt_train"
dataloader.test.dataset.names = "synthetic_lt_val"
model.roi_heads.box_predictor.test_score_thresh = 1e-4
model.roi_heads.box_predictor.test_topk_per_image = 300
train.output_dir = "./output/synthetic/faster_rcnn_long_tail_effnet_lite0_FPN"
