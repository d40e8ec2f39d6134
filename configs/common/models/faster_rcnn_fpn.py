"""Faster R-CNN R50-FPN: Mask R-CNN without the mask branch."""
from .mask_rcnn_fpn import model

model.roi_heads.mask_in_features = None
model.roi_heads.mask_pooler = None
model.roi_heads.mask_head = None
