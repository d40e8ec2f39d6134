"""FCOS R50-FPN (P3-P7) with balanced_det's FCOS (detectron2 semantics, empty-image safe)."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from balanced_det.modeling import FCOS, FCOSStyleHead

from .backbones import R50_PIXEL_MEAN, R50_PIXEL_STD, r50_fpn_p3p7

model = L(FCOS)(
    backbone=r50_fpn_p3p7,
    head=L(FCOSStyleHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        norm="GN",
        prior_prob=0.01,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    num_classes=80,
    center_sampling_radius=1.5,
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    test_nms_thresh=0.6,
    max_detections_per_image=100,
    pixel_mean=R50_PIXEL_MEAN,
    pixel_std=R50_PIXEL_STD,
)
