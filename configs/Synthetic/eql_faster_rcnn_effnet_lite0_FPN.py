"""Equalization Loss Faster R-CNN, EfficientNet-Lite0-FPN, long-tailed synthetic shapes, CPU
(docs/methods/eql.md).

Differs from faster_rcnn_long_tail_effnet_lite0_FPN.py (same data, schedule, seed and
inference settings) only by eql() in common/models/balanced_rcnn.py, with lambda = 0.06: the
two rare classes (image frequency about 0.04 and 0.02) are the tail classes.
"""
from ..common.models.balanced_rcnn import eql
from .faster_rcnn_long_tail_effnet_lite0_FPN import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

eql(model, lambda_=0.06)
train.output_dir = "./output/synthetic/eql_faster_rcnn_effnet_lite0_FPN"
