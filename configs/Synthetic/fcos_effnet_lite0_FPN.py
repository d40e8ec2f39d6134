"""FCOS, EfficientNet-Lite0-FPN, synthetic shapes (6 long-tailed classes, 256 px), CPU."""
from ..common.data.synthetic import dataloader
from ..common.models.fcos import model
from ..common.models.lite0 import lite0_dense
from ..common.optim import SGD as optimizer
from ..common.schedules import multistep
from ..common.train import train

lite0_dense(model, num_classes=6)
optimizer.lr = 0.01
train.max_iter = 300
lr_multiplier = multistep(milestones=(8, 11, 12), warmup_fraction=0.1)
train.checkpointer.period = 100
train.eval_period = 300
train.log_period = 10
train.seed = 0
train.output_dir = "./output/synthetic/fcos_effnet_lite0_FPN"
