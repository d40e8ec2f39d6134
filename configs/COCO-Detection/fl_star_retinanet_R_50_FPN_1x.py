"""FL* RetinaNet R50-FPN 1x on COCO 2017 (Lin et al., "Focal Loss for Dense Object
Detection", ICCV 2017, appendix A; docs/methods/fl_star.md).

Differs from retinanet_R_50_FPN_1x only in the model class (BalancedRetinaNet) and
cls_loss=FocalLossStar(alpha=0.25, gamma=2, beta=1): see common/models/dense_methods.py.
The paper's other setting is ``model.cls_loss.gamma=4 model.cls_loss.beta=0``.
"""
from ..common.models.dense_methods import fl_star_retinanet
from .retinanet_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

fl_star_retinanet(model, gamma=2.0, beta=1.0)
