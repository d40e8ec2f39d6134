"""RetinaNet (detectron2's class), EfficientNet-Lite0-FPN, synthetic shapes (6 long-tailed
classes, 8-40 px objects on 256 px images), CPU. Same schedule and seed as
fcos_effnet_lite0_FPN.py; small-object anchors (base 2x the stride, 16-256 on P3-P7).
"""
from ..common.cpu import cpu_schedule
from ..common.data.synthetic import dataloader
from ..common.models.dense_methods import small_object_anchors
from ..common.models.lite0 import lite0_dense
from ..common.models.retinanet import model
from ..common.optim import SGD as optimizer
from ..common.train import train

lite0_dense(model, num_classes=6)
model.input_format = "RGB"
small_object_anchors(model)
lr_multiplier = cpu_schedule(train, optimizer, output_dir="./output/synthetic/retinanet_effnet_lite0_FPN")
