"""Mask R-CNN R50-FPN 1x on COCO 2017 (detectron2's baseline)."""
from ..common.data.coco import dataloader
from ..common.models.backbones import R50_INIT
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.schedules import lr_multiplier_1x as lr_multiplier
from ..common.train import train

dataloader.train.mapper.use_instance_mask = True
train.init_checkpoint = R50_INIT
