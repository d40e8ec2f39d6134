"""Small two-stage parts (ROI heads, RPN) on random features, and crafted proposal batches."""
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, StandardROIHeads
from detectron2.structures import Boxes, Instances

from balanced_det.modeling.losses import CARL, BalancedL1Loss, GuidedLoss
from balanced_det.modeling.roi_heads import BalancedFastRCNNOutputLayers, BalancedROIHeads
from balanced_det.modeling.rpn import BalancedRPN
from balanced_det.modeling.samplers import (
    AllSampler,
    CombinedSampler,
    InstanceBalancedPosSampler,
    IoUBalancedNegSampler,
    ISRPWeighting,
    OHEMSampler,
    RandomNegSampler,
    RandomPosSampler,
    RandomSampler,
    ScoreHLRSampler,
)

#: the ROI samplers of the package, by the method they implement (test parametrisation)
ROI_SAMPLERS = ("random", "ohem", "libra", "pisa", "none")


def roi_sampler(method, isr_n=True, **kw):
    """The sampler object of a method (``kw``: the sampler's own arguments)."""
    if method == "random":
        return RandomSampler()
    if method == "ohem":
        return OHEMSampler(**kw)
    if method == "libra":
        return CombinedSampler(InstanceBalancedPosSampler(), IoUBalancedNegSampler(**kw))
    if method == "pisa":
        return (ScoreHLRSampler(**kw) if isr_n
                else CombinedSampler(RandomPosSampler(), RandomNegSampler()))
    if method == "none":
        return AllSampler()
    raise KeyError(method)


def predictor_plugins(carl=False, guided_loss=False, guided_w_cls=2.0, box_reg_loss_type=None,
                      **kw):
    """Predictor keyword arguments with the method flags of the tests turned into plug-ins."""
    if carl:
        kw["carl"] = CARL()
    if guided_loss:
        kw["guided_loss"] = GuidedLoss(w_cls=guided_w_cls)
    if box_reg_loss_type == "balanced_l1":
        kw["box_reg_loss"] = BalancedL1Loss()
    elif box_reg_loss_type is not None:
        kw["box_reg_loss_type"] = box_reg_loss_type
    return kw

NUM_CLASSES = 3
CHANNELS = 8
STRIDE = 8
IMAGE = (128, 160)  # h, w


def roi_parts(num_classes=NUM_CLASSES, predictor_cls=BalancedFastRCNNOutputLayers, matcher=None,
              **predictor_kw):
    return dict(
        num_classes=num_classes,
        batch_size_per_image=64,
        positive_fraction=0.25,
        proposal_matcher=matcher or Matcher([0.5], [0, 1], allow_low_quality_matches=False),
        box_in_features=["p3"],
        box_pooler=ROIPooler(output_size=7, scales=(1.0 / STRIDE,), sampling_ratio=0,
                             pooler_type="ROIAlignV2"),
        box_head=FastRCNNConvFCHead(ShapeSpec(channels=CHANNELS, height=7, width=7),
                                    conv_dims=[], fc_dims=[32]),
        box_predictor=predictor_cls(ShapeSpec(channels=32), num_classes=num_classes,
                                    box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
                                    test_score_thresh=0.05,
                                    **(predictor_plugins(**predictor_kw)
                                       if predictor_cls is BalancedFastRCNNOutputLayers
                                       else predictor_kw)),
    )


def balanced_roi_heads(sampler="random", seed=0, predictor_kw=None, matcher=None, isr_p=None,
                       isr_n=True, sampler_kw=None, **kw):
    """A ROI head with the sampler of method ``sampler`` (ISR-P on by default with "pisa")."""
    torch.manual_seed(seed)
    parts = roi_parts(matcher=matcher, **(predictor_kw or {}))
    parts.update(kw)
    if isr_p is None:
        isr_p = sampler == "pisa"
    return BalancedROIHeads(sampler=roi_sampler(sampler, isr_n=isr_n, **(sampler_kw or {})),
                            positive_weighting=ISRPWeighting() if isr_p else None, **parts)


def standard_roi_heads(seed=0):
    torch.manual_seed(seed)
    return StandardROIHeads(**roi_parts(predictor_cls=FastRCNNOutputLayers))


def labelled_proposals(gt_classes, weights=None, seed=0, shift=1.0):
    """One image's sampled proposals: proposal i is GT i's box shifted by N(0, shift) px, with
    ``gt_classes`` (C = background) and, optionally, per-sample ``cls_weights``."""
    g = torch.Generator().manual_seed(seed)
    n = len(gt_classes)
    xy = torch.rand(n, 2, generator=g) * 80
    gt = torch.cat([xy, xy + 20 + torch.rand(n, 2, generator=g) * 20], dim=1)
    p = Instances(IMAGE)
    p.proposal_boxes = Boxes(gt + torch.randn(n, 4, generator=g) * shift)
    p.gt_boxes = Boxes(gt)
    p.gt_classes = torch.as_tensor(gt_classes, dtype=torch.long)
    if weights is not None:
        p.cls_weights = torch.as_tensor(weights, dtype=torch.float32)
    return p


def features(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE
    return {"p3": torch.randn(batch, CHANNELS, h // STRIDE, w // STRIDE, generator=g)}


def jitter(boxes, n, scale, g):
    """``n`` boxes around each of ``boxes`` (k x 4), shifted by up to ``scale`` of their size."""
    b = boxes.repeat_interleave(n, dim=0)
    wh = (b[:, 2:] - b[:, :2]).repeat(1, 2)
    return b + (torch.rand(b.shape, generator=g) * 2 - 1) * scale * wh


def crafted_image(gt_boxes, gt_classes, num_pos_per_gt=12, num_neg=150, seed=0):
    """Targets and proposals for one image: jittered copies of every GT (mostly IoU >= 0.5),
    boxes around the GTs with lower overlap (0 < IoU < 0.5) and random boxes. Each proposal's
    ``objectness_logits`` is ``-(index + 1)`` (appended GTs get detectron2's +23), so sampled
    proposals can be traced back (:func:`proposal_index`)."""
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE
    gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4)
    parts = []
    if len(gt_boxes):
        parts += [jitter(gt_boxes, num_pos_per_gt, 0.08, g), jitter(gt_boxes, 10, 0.45, g)]
    xy = torch.rand(num_neg, 2, generator=g) * torch.tensor([w - 30.0, h - 30.0])
    wh = 8 + torch.rand(num_neg, 2, generator=g) * 30
    parts.append(torch.cat([xy, xy + wh], dim=1))
    boxes = torch.cat(parts)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    proposals = Instances(IMAGE)
    proposals.proposal_boxes = Boxes(boxes)
    proposals.objectness_logits = -torch.arange(1, len(boxes) + 1, dtype=torch.float32)
    targets = Instances(IMAGE)
    targets.gt_boxes = Boxes(gt_boxes)
    targets.gt_classes = torch.as_tensor(gt_classes, dtype=torch.long).reshape(-1)
    return proposals, targets


GTS = [
    ([[10, 10, 50, 60], [60, 20, 120, 70], [30, 80, 90, 120]], [0, 1, 2]),
    ([[20, 30, 70, 90], [90, 10, 150, 60]], [1, 1]),
]


def crafted_batch(**kw):
    pairs = [crafted_image(b, c, seed=i, **kw) for i, (b, c) in enumerate(GTS)]
    return [p for p, _ in pairs], [t for _, t in pairs]


def rpn_parts():
    return dict(
        in_features=["p3"],
        head=StandardRPNHead(in_channels=CHANNELS, num_anchors=3),
        anchor_generator=DefaultAnchorGenerator(sizes=[[16, 32, 64]], aspect_ratios=[1.0],
                                                strides=[STRIDE], offset=0.0),
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=64,
        positive_fraction=0.5,
        pre_nms_topk=(200, 100),
        post_nms_topk=(100, 50),
    )


def balanced_rpn(seed=0, sampler="random", guided_loss=False, **kw):
    """A BalancedRPN; ``sampler="none"``: Sampling-Free (every anchor, positive normaliser)."""
    torch.manual_seed(seed)
    if sampler == "none":
        kw.update(sampler=AllSampler(), loss_normalizer="positives")
    return BalancedRPN(**rpn_parts(), guided_loss=GuidedLoss() if guided_loss else None, **kw)


def standard_rpn(seed=0):
    torch.manual_seed(seed)
    return RPN(**rpn_parts())


def image_list(batch=2):
    from detectron2.structures import ImageList

    h, w = IMAGE
    return ImageList(torch.zeros(batch, 3, h, w), [IMAGE] * batch)


def proposal_index(instances):
    """Original proposal index of each sampled proposal (-1 for appended GT boxes)."""
    logit = instances.objectness_logits
    return torch.where(logit < 0, -logit - 1, torch.full_like(logit, -1)).long()
