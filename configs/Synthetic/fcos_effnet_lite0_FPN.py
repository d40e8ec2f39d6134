"""FCOS, EfficientNet-Lite0-FPN, synthetic shapes (6 long-tailed classes, 256 px), CPU."""
from ..common.cpu import cpu_schedule
from ..common.data.synthetic import dataloader
from ..common.models.fcos import model
from ..common.models.lite0 import lite0_dense
from ..common.optim import SGD as optimizer
from ..common.train import train

lite0_dense(model, num_classes=6)
lr_multiplier = cpu_schedule(train, optimizer, output_dir="./output/synthetic/fcos_effnet_lite0_FPN")
