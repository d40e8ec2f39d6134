"""FCOS, EfficientNet-Lite0-FPN, tree-crown tiles, CPU: the `make demo` baseline."""
from ..common.cpu import cpu_schedule
from ..common.data.trees import dataloader
from ..common.models.fcos import model
from ..common.models.lite0 import lite0_dense
from ..common.optim import SGD as optimizer
from ..common.train import train

lite0_dense(model, num_classes=1)
lr_multiplier = cpu_schedule(train, optimizer, max_iter=200, output_dir="./output/trees/fcos_effnet_lite0_FPN")
