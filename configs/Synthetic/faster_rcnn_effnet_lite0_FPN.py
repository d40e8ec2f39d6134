"""Faster R-CNN (detectron2's classes), EfficientNet-Lite0-FPN (P3-P6), synthetic shapes
(6 long-tailed classes, 8-40 px objects on 256 px images), CPU: the two-stage baseline of
the synthetic configs. Same schedule and seed as the synthetic dense configs.

Expected time on this 2-core CPU: ~1.2 s/iteration (measured with 1 thread on a shared
machine), ~6 minutes for 300 iterations + evaluation.
"""
from ..common.cpu import cpu_schedule
from ..common.data.synthetic import dataloader
from ..common.models.faster_rcnn_fpn import model
from ..common.models.lite0 import lite0_rcnn
from ..common.optim import SGD as optimizer
from ..common.train import train

lite0_rcnn(model, num_classes=6)
lr_multiplier = cpu_schedule(train, optimizer, output_dir="./output/synthetic/faster_rcnn_effnet_lite0_FPN")
