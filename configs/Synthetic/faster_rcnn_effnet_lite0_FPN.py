"""Faster R-CNN (detectron2's classes), EfficientNet-Lite0-FPN (P3-P6), synthetic shapes
(6 long-tailed classes, 8-40 px objects on 256 px images), CPU: the two-stage baseline of
the synthetic configs. Same schedule and seed as the synthetic dense configs.

Time per iteration and peak memory on this project's 2-core CPU: README, Results
(measured by tools/compare.py).
"""
from ..common.cpu import cpu_schedule
from ..common.data.synthetic import dataloader
from ..common.models.faster_rcnn_fpn import model
from ..common.models.lite0 import lite0_rcnn
from ..common.optim import SGD as optimizer
from ..common.train import train

lite0_rcnn(model, num_classes=6)
lr_multiplier = cpu_schedule(train, optimizer, output_dir="./output/synthetic/faster_rcnn_effnet_lite0_FPN")
