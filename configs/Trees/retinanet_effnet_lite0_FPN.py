"""RetinaNet (detectron2's class), EfficientNet-Lite0-FPN, tree-crown tiles, CPU: the dense
anchor-based baseline of the tree configs. Same data, schedule and seed as
fcos_effnet_lite0_FPN.py.

Anchors: base size 2x the stride (16-256 on P3-P7) instead of COCO's 4x (32-512), for tree
crowns of ~20-100 px (common/models/dense_methods.py: small_object_anchors).
"""
from ..common.cpu import cpu_schedule
from ..common.data.trees import dataloader
from ..common.models.dense_methods import small_object_anchors
from ..common.models.lite0 import lite0_dense
from ..common.models.retinanet import model
from ..common.optim import SGD as optimizer
from ..common.train import train

lite0_dense(model, num_classes=1)
model.input_format = "RGB"
small_object_anchors(model)
lr_multiplier = cpu_schedule(train, optimizer, max_iter=200, output_dir="./output/trees/retinanet_effnet_lite0_FPN")
