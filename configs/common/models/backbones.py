"""Backbones shared by the model configs."""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from balanced_det.modeling.backbone import PIXEL_MEAN_RGB_LITE0, PIXEL_STD_RGB_LITE0
from balanced_det.modeling.backbone import build_efficientnet_lite0_fpn


def r50_bottom_up(out_features):
    return L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
        out_features=out_features,
        freeze_at=2,
    )


# P2-P6 (R-CNN): ResNet-50 res2-res5 + max-pooled P6.
r50_fpn_p2p6 = L(FPN)(
    bottom_up=r50_bottom_up(["res2", "res3", "res4", "res5"]),
    in_features="${.bottom_up.out_features}",
    out_channels=256,
    top_block=L(LastLevelMaxPool)(),
)

# P3-P7 (RetinaNet, FCOS): ResNet-50 res3-res5 + P6/P7 convs on P5.
r50_fpn_p3p7 = L(FPN)(
    bottom_up=r50_bottom_up(["res3", "res4", "res5"]),
    in_features="${.bottom_up.out_features}",
    out_channels=256,
    top_block=L(LastLevelP6P7)(in_channels=256, out_channels=256, in_feature="p5"),
)

# detectron2's MSRA ImageNet initialisation (BGR, caffe-style normalisation).
R50_INIT = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
R50_PIXEL_MEAN = [103.530, 116.280, 123.675]
R50_PIXEL_STD = [1.0, 1.0, 1.0]

# EfficientNet-Lite0 + FPN with offline ImageNet weights (RGB input), for the CPU configs.
# freeze_at=4: stem and stages 1-3 (up to stride 8) stay at their ImageNet values; their
# depthwise-conv backward is the most expensive part of a CPU training step.
effnet_lite0_fpn_p3p7 = L(build_efficientnet_lite0_fpn)(out_channels=128, top_block="p6p7",
                                                         freeze_at=4)
effnet_lite0_fpn_p3p6 = L(build_efficientnet_lite0_fpn)(out_channels=128, top_block="maxpool",
                                                         freeze_at=4)
LITE0_PIXEL_MEAN = list(PIXEL_MEAN_RGB_LITE0)
LITE0_PIXEL_STD = list(PIXEL_STD_RGB_LITE0)
