"""USW (Unified Sample Weighting network) Faster R-CNN R50-FPN 1x (docs/methods/usw.md).

Method parts: the weighting network on the ROI box predictor (SampleWeightingNet: per-ROI
scores from IoU, GT-class probability, CE and the 4-d box loss; losses weighted by exp(-s),
regularised by 0.5 s) and its own Adam optimizer (LR 1e-3, weight decay 1e-4) next to the
baseline's SGD, both on the baseline's LR schedule. Also differs from faster_rcnn_R_50_FPN_1x,
as in the authors' configs: box loss Smooth L1 with beta 1.0 (baseline: L1). The authors clip
gradients at norm 35 (their baseline too); this config keeps detectron2's baseline (no
clipping): usw() in common/models/balanced_rcnn.py.
"""
from ..common.models.balanced_rcnn import usw
from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

optimizer = usw(model, optimizer)
