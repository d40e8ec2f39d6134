"""Turn the R50-FPN model configs into small EfficientNet-Lite0-FPN models for a CPU.

Lite0 gives c3/c4/c5 (strides 8/16/32), so R-CNN models use P3-P6 instead of P2-P6 and
dense models keep P3-P7. FPN and heads use 128 channels and fewer convs.
"""
from detectron2.layers import ShapeSpec

from .backbones import (
    LITE0_PIXEL_MEAN,
    LITE0_PIXEL_STD,
    effnet_lite0_fpn_p3p6,
    effnet_lite0_fpn_p3p7,
)

CHANNELS = 128


def lite0_dense(model, num_classes, tower_convs=2):
    """FCOS / RetinaNet-style model config -> Lite0-FPN P3-P7, ``tower_convs`` convs per tower."""
    model.backbone = effnet_lite0_fpn_p3p7
    model.head.input_shape = [ShapeSpec(channels=CHANNELS)] * 5
    model.head.conv_dims = [CHANNELS] * tower_convs
    model.num_classes = num_classes
    model.pixel_mean = LITE0_PIXEL_MEAN
    model.pixel_std = LITE0_PIXEL_STD
    return model


def lite0_rcnn(model, num_classes):
    """Faster / Mask R-CNN model config -> Lite0-FPN P3-P6."""
    model.backbone = effnet_lite0_fpn_p3p6
    rpn = model.proposal_generator
    rpn.in_features = ["p3", "p4", "p5", "p6"]
    rpn.head.in_channels = CHANNELS
    rpn.anchor_generator.sizes = [[16], [32], [64], [128]]
    rpn.anchor_generator.strides = [8, 16, 32, 64]
    rpn.pre_nms_topk = (1000, 1000)
    rpn.post_nms_topk = (500, 500)
    roi = model.roi_heads
    roi.num_classes = num_classes
    roi.batch_size_per_image = 256
    roi.box_in_features = ["p3", "p4", "p5"]
    roi.box_pooler.scales = (1.0 / 8, 1.0 / 16, 1.0 / 32)
    roi.box_head.input_shape = ShapeSpec(channels=CHANNELS, height=7, width=7)
    roi.box_head.fc_dims = [256, 256]
    roi.box_predictor.input_shape = ShapeSpec(channels=256)
    if roi.get("mask_head") is not None:
        roi.mask_in_features = ["p3", "p4", "p5"]
        roi.mask_pooler.scales = (1.0 / 8, 1.0 / 16, 1.0 / 32)
        roi.mask_head.input_shape = ShapeSpec(channels=CHANNELS, width=14, height=14)
        roi.mask_head.conv_dims = [CHANNELS] * 3
    model.pixel_mean = LITE0_PIXEL_MEAN
    model.pixel_std = LITE0_PIXEL_STD
    model.input_format = "RGB"
    return model
