"""Mask R-CNN R50-FPN 1x on LVIS v1 (1203 classes; detectron2's classes, softmax classifier):
the baseline of eql_mask_rcnn_R_50_FPN_1x.py. As detectron2's LVIS configs: score threshold
1e-4 and 300 detections per image. Uniform image sampling; for detectron2's repeat-factor
sampling add ``repeat_factor_sampling(dataloader)`` (common/data/lvis.py) to a copy of this
file."""
from ..common.data.lvis import dataloader
from ..common.models.backbones import R50_INIT
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.schedules import lr_multiplier_1x as lr_multiplier
from ..common.train import train

dataloader.train.mapper.use_instance_mask = True
model.roi_heads.num_classes = 1203
model.roi_heads.box_predictor.test_score_thresh = 1e-4
model.roi_heads.box_predictor.test_topk_per_image = 300
train.init_checkpoint = R50_INIT
train.output_dir = "./output/lvis_v1/mask_rcnn_R_50_FPN_1x"
