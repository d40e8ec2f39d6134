"""USW Faster R-CNN, EfficientNet-Lite0-FPN, synthetic data, CPU (docs/methods/usw.md).

Differs from faster_rcnn_effnet_lite0_FPN.py (same data, schedule, clipping and seed) in the
method's parts (the weighting network on the ROI box predictor, trained by its own Adam, LR
1e-3) and, as the authors' configs, Smooth L1 beta 1.0 box loss: usw() in
common/models/balanced_rcnn.py.
"""
from ..common.models.balanced_rcnn import usw
from .faster_rcnn_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

optimizer = usw(model, optimizer)
train.output_dir = "./output/synthetic/usw_faster_rcnn_effnet_lite0_FPN"
