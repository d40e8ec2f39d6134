"""Faster R-CNN (detectron2's classes), EfficientNet-Lite0-FPN (P3-P6), tree-crown tiles, CPU:
the two-stage baseline of the tree configs. Same data, schedule and seed as
fcos_effnet_lite0_FPN.py. Anchors 16-128 px (2x the stride) for crowns of ~20-100 px.

Time per iteration and peak memory on this project's 2-core CPU: README, Results
(measured by tools/compare.py).
"""
from ..common.cpu import cpu_schedule
from ..common.data.trees import dataloader
from ..common.models.faster_rcnn_fpn import model
from ..common.models.lite0 import lite0_rcnn
from ..common.optim import SGD as optimizer
from ..common.train import train

lite0_rcnn(model, num_classes=1)
lr_multiplier = cpu_schedule(train, optimizer, max_iter=200, output_dir="./output/trees/faster_rcnn_effnet_lite0_FPN")
