"""Faster R-CNN (detectron2's classes), EfficientNet-Lite0-FPN (P3-P6), tree-crown tiles, CPU:
the two-stage baseline of the tree configs. Same data, schedule and seed as
fcos_effnet_lite0_FPN.py. Anchors 16-128 px (2x the stride) for crowns of ~20-100 px.

Expected time on this 2-core CPU: ~2.3 s/iteration (measured with 1 thread on a shared
machine), ~12 minutes for 300 iterations + evaluation.
"""
from ..common.cpu import cpu_schedule
from ..common.data.trees import dataloader
from ..common.models.faster_rcnn_fpn import model
from ..common.models.lite0 import lite0_rcnn
from ..common.optim import SGD as optimizer
from ..common.train import train

lite0_rcnn(model, num_classes=1)
lr_multiplier = cpu_schedule(train, optimizer, output_dir="./output/trees/faster_rcnn_effnet_lite0_FPN")
