"""Small dense detectors for component tests: a tiny P3-P7 backbone and builders."""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.structures import Boxes, Instances

from balanced_det.modeling.dense_heads import FCOSStyleHead
from balanced_det.modeling.meta_arch.dw_fcos import DWFCOS
from balanced_det.modeling.meta_arch.fcos import FCOS
from balanced_det.modeling.meta_arch.retinanet import BalancedRetinaNet

STRIDES = (8, 16, 32, 64, 128)
NAMES = ("p3", "p4", "p5", "p6", "p7")
CH = 32


class TinyBackbone(Backbone):
    """P3-P7 (strides 8..128, 32 channels): strided average pooling + a 1x1 conv per level."""

    def __init__(self, channels=CH):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, channels, 1) for _ in STRIDES])
        self.channels = channels

    @property
    def size_divisibility(self):
        return 32

    def output_shape(self):
        return {n: ShapeSpec(channels=self.channels, stride=s) for n, s in zip(NAMES, STRIDES)}

    def forward(self, x):
        out = {}
        for n, s, conv in zip(NAMES, STRIDES, self.convs):
            h, w = -(-x.shape[-2] // s), -(-x.shape[-1] // s)
            out[n] = conv(F.adaptive_avg_pool2d(x, (h, w)))
        return out


PIXEL = dict(pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0])


def fcos_head(num_classes, **kw):
    return FCOSStyleHead(input_shape=[ShapeSpec(channels=CH)] * 5, num_classes=num_classes,
                         conv_dims=[CH], norm="GN", **kw)


def dense_plugins(cls_loss_type=None, box_reg_loss_type=None, isr_p=False, carl=False,
                  guided_loss=False, sampling_free_init=False, **kw):
    """Detector keyword arguments with the method flags of the tests turned into plug-ins
    (each with its defaults); detectron2's own ``box_reg_loss_type`` strings pass through."""
    from balanced_det.modeling import (
        CARL, BalancedL1Loss, GHMCLoss, GHMRLoss, GuidedLoss, ISRPWeighting, SigmoidBCELoss)

    cls = {None: None, "focal": None, "bce": SigmoidBCELoss, "ghm": GHMCLoss}[cls_loss_type]
    if cls is not None:
        kw["cls_loss"] = cls()
    box = {"balanced_l1": lambda: BalancedL1Loss(beta=0.11), "ghm": GHMRLoss}.get(box_reg_loss_type)
    if box is not None:
        kw["box_reg_loss"] = box()
    elif box_reg_loss_type is not None:
        kw["box_reg_loss_type"] = box_reg_loss_type
    if isr_p:
        kw["positive_weighting"] = ISRPWeighting()
    if carl:
        kw["carl"] = CARL()
    if guided_loss:
        kw["guided_loss"] = GuidedLoss()
    if sampling_free_init:
        kw["prior_init"] = True
    return kw


def tiny_fcos(num_classes=3, **kw):
    return FCOS(backbone=TinyBackbone(), head=fcos_head(num_classes), head_in_features=NAMES,
                num_classes=num_classes, **PIXEL, **dense_plugins(**kw))


def tiny_dw_fcos(num_classes=3, box_refine=False, **kw):
    head = fcos_head(num_classes, prior_prob=0.02, box_bias_init=4.0, box_refine=box_refine)
    return DWFCOS(backbone=TinyBackbone(), head=head, head_in_features=NAMES,
                  num_classes=num_classes, **PIXEL, **kw)


def retinanet_parts(num_classes=3):
    return dict(
        backbone=TinyBackbone(),
        head=RetinaNetHead(input_shape=[ShapeSpec(channels=CH)] * 5, num_classes=num_classes,
                           conv_dims=[CH], prior_prob=0.01, num_anchors=9),
        head_in_features=list(NAMES),
        anchor_generator=DefaultAnchorGenerator(
            sizes=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in (32, 64, 128, 256, 512)],
            aspect_ratios=[0.5, 1.0, 2.0], strides=list(STRIDES), offset=0.0),
        box2box_transform=Box2BoxTransform(weights=[1.0, 1.0, 1.0, 1.0]),
        anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        num_classes=num_classes,
        smooth_l1_beta=0.1,
        **PIXEL,
    )


def tiny_retinanet(num_classes=3, detectron2_class=False, **kw):
    parts = retinanet_parts(num_classes)
    if detectron2_class:
        return RetinaNet(**parts, **kw)
    return BalancedRetinaNet(**parts, **dense_plugins(**kw))


def instances(boxes, classes, h=128, w=160):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    return inst


def batch(gts, h=128, w=160, seed=0):
    """One input dict per (boxes, classes) pair, random images."""
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(3, h, w, generator=g) * 255, "instances": instances(b, c, h, w),
             "height": h, "width": w} for b, c in gts]


TWO_IMAGES = [
    ([[10, 12, 60, 70], [70, 20, 150, 110], [30, 80, 58, 120]], [0, 1, 2]),
    ([[40, 30, 120, 100]], [1]),
]
