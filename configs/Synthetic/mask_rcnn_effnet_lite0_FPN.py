"""Mask R-CNN (detectron2's classes), EfficientNet-Lite0-FPN (P3-P6), synthetic shapes with
polygon masks, CPU: the instance-segmentation baseline. Same schedule and seed as
faster_rcnn_effnet_lite0_FPN.py.

Time per iteration and peak memory on this project's 2-core CPU: README, Results
(measured by tools/compare.py).
"""
from ..common.cpu import cpu_schedule
from ..common.data.synthetic import dataloader
from ..common.models.lite0 import lite0_rcnn
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.train import train

dataloader.train.mapper.use_instance_mask = True
lite0_rcnn(model, num_classes=6)
lr_multiplier = cpu_schedule(train, optimizer, output_dir="./output/synthetic/mask_rcnn_effnet_lite0_FPN")
