"""RetinaNet R50-FPN 1x on COCO 2017 (detectron2's baseline, focal loss)."""
from ..common.data.coco import dataloader
from ..common.models.backbones import R50_INIT
from ..common.models.retinanet import model
from ..common.optim import SGD as optimizer
from ..common.schedules import lr_multiplier_1x as lr_multiplier
from ..common.train import train

optimizer.lr = 0.01
train.init_checkpoint = R50_INIT
