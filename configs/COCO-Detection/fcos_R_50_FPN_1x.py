"""FCOS R50-FPN 1x on COCO 2017 (focal loss, GIoU, centerness)."""
from ..common.data.coco import dataloader
from ..common.models.backbones import R50_INIT
from ..common.models.fcos import model
from ..common.optim import SGD as optimizer
from ..common.schedules import lr_multiplier_1x as lr_multiplier
from ..common.train import train

optimizer.lr = 0.01
train.init_checkpoint = R50_INIT
