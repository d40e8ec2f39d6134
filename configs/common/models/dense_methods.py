"""Method switches for the dense model configs (RetinaNet, FCOS).

Each function takes a baseline model config (``common/models/retinanet.py`` or
``common/models/fcos.py``, possibly already turned into a Lite0 model) and changes only the
method's own plug-ins; its docstring lists them. The method configs under COCO-Detection/,
Trees/ and Synthetic/ import their baseline config and call one of these, so that the
COCO, tree and synthetic versions of a method cannot drift apart.
"""
from detectron2.config import LazyCall as L

from balanced_det.modeling.losses import (
    CARL,
    BalancedL1Loss,
    FocalLossStar,
    GHMCLoss,
    GHMRLoss,
    GuidedLoss,
    SigmoidBCELoss,
    SmoothL1Loss,
    SoftTargetFocalLoss,
)
from balanced_det.modeling.assigners import NoisyAnchorAssigner
from balanced_det.modeling.meta_arch.dw_fcos import DWFCOS
from balanced_det.modeling.meta_arch.retinanet import BalancedRetinaNet
from balanced_det.modeling.necks.balanced_fpn import BalancedFPN
from balanced_det.modeling.samplers import ISRPWeighting

from .balanced_rcnn import sample_weighting_net, usw_optimizer


def balanced_retinanet(model):
    """detectron2 ``RetinaNet`` -> ``BalancedRetinaNet``. With no option set, its losses are
    detectron2's (focal + Smooth L1, EMA positive-count normaliser), so this is no change."""
    model._target_ = BalancedRetinaNet
    return model


def pisa_retinanet(model):
    """PISA for one-stage detectors: ISR-P on the positive anchors (gamma 2.0, beta 0.0) and
    CARL with sigmoid probabilities (k 1.0, bias 0.2, the baseline's Smooth L1 box loss, as a
    separate ``loss_carl``). No ISR-N (not used for one-stage detectors). mmdet's PISA
    RetinaNet also turns its baseline's L1 box loss into Smooth L1 (beta 0.11); detectron2's
    baseline already uses Smooth L1 (beta 0.1), kept."""
    balanced_retinanet(model)
    model.positive_weighting = L(ISRPWeighting)(gamma=2.0, beta=0.0)
    model.carl = L(CARL)(k=1.0, bias=0.2)
    return model


def ghm_retinanet(model, per_level=False):
    """GHM: GHM-C classification loss (30 bins, momentum 0.75) instead of focal, GHM-R box
    loss (mu 0.02, 10 bins, momentum 0.7, weight 10) instead of Smooth L1. ``per_level``:
    both losses called once per FPN level, as mmdetection's RetinaNet head does (the sum of
    the levels' losses, each normalised by its own element count; docs/methods/ghm.md)."""
    balanced_retinanet(model)
    model.cls_loss = L(GHMCLoss)(bins=30, momentum=0.75, loss_weight=1.0, per_level=per_level)
    model.box_reg_loss = L(GHMRLoss)(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0,
                                     per_level=per_level)
    return model


def libra_retinanet(model):
    """Libra RetinaNet: Balanced Feature Pyramid on the FPN (non-local refine at P4 = index 1
    of P3-P7) and Balanced L1 box loss (alpha 0.5, gamma 1.5, beta 0.11). (IoU-balanced
    sampling is for R-CNN proposals; RetinaNet has none.)"""
    balanced_retinanet(model)
    model.backbone = L(BalancedFPN)(fpn=model.backbone, refine_level=1, refine_type="non_local")
    model.box_reg_loss = L(BalancedL1Loss)(alpha=0.5, gamma=1.5, beta=0.11)
    return model


def sampling_free_retinanet(model):
    """Sampling-Free RetinaNet: plain BCE instead of focal loss, guided loss
    (w_reg = w_cls = 1), optimal bias from the training-set statistics (this model's anchors
    and matcher) and class-adaptive inference thresholds."""
    balanced_retinanet(model)
    model.cls_loss = L(SigmoidBCELoss)()
    model.guided_loss = L(GuidedLoss)(w_cls=1.0, w_reg=1.0)
    model.prior_init = True
    model.class_adaptive_thresholds = True
    return model


def fl_star_retinanet(model, gamma=2.0, beta=1.0):
    """FL* instead of focal loss (alpha 0.25; gamma 2, beta 1 by default, the paper's first
    setting; its other one is gamma 4, beta 0). Anchors, matcher, box loss, normaliser, prior
    and inference: the baseline's. See docs/methods/fl_star.md."""
    balanced_retinanet(model)
    model.cls_loss = L(FocalLossStar)(alpha=0.25, gamma=gamma, beta=beta)
    return model


def fl_star_fcos(model, gamma=2.0, beta=1.0):
    """FL* instead of FCOS's focal loss (alpha 0.25, ``gamma``, ``beta`` as
    :func:`fl_star_retinanet`); everything else is FCOS's."""
    model.cls_loss = L(FocalLossStar)(alpha=0.25, gamma=gamma, beta=beta)
    return model


def noisy_anchor_retinanet(model, topk=30, alpha=0.75):
    """Learning from Noisy Anchors: the top-30 anchors by IoU of every GT are the candidates
    (no IoU threshold, no ignored anchors; ``anchor_matcher`` is not used in training), soft
    targets and loss weights from their cleanliness (alpha 0.75), the soft-target focal loss
    with the authors' alpha 0.5 (the baseline's: 0.25), gamma 2, Smooth L1 beta 0.1. Prior,
    normaliser and inference: the baseline's. See docs/methods/noisy_anchor.md."""
    balanced_retinanet(model)
    model.anchor_assigner = L(NoisyAnchorAssigner)(topk=topk, alpha=alpha)
    model.cls_loss = L(SoftTargetFocalLoss)(alpha=0.5, gamma=2.0)
    model.box_reg_loss = L(SmoothL1Loss)(beta=0.1)
    return model


def usw_retinanet(model, optimizer, lr=1e-3, weight_decay=1e-4):
    """USW on RetinaNet: a ``SampleWeightingNet`` over every anchor (the authors' settings: hidden
    64, init N(0, 1e-4), clamp [-2, 2], lambda 0.5, one classification score: the mean over all
    anchors), with detached inputs. The box loss stays the baseline's Smooth L1 (beta 0.1;
    the authors' 0.11). Returns the optimizer config: Adam (``lr`` 1e-3, ``weight_decay``
    1e-4) on the network, the baseline ``optimizer`` on the rest, as ``usw()``."""
    balanced_retinanet(model)
    model.sample_weighting = sample_weighting_net()
    return usw_optimizer(optimizer, lr, weight_decay)


def sampling_free_fcos(model):
    """Sampling-Free FCOS: plain BCE instead of focal loss, guided loss (w_reg = w_cls = 1;
    L_reg = mean of the box and centerness losses, as the reference), optimal bias from the
    training-set statistics (points counted with this model's FCOS assignment) and
    class-adaptive inference thresholds."""
    model.cls_loss = L(SigmoidBCELoss)()
    model.guided_loss = L(GuidedLoss)(w_cls=1.0, w_reg=1.0)
    model.prior_init = True
    model.class_adaptive_thresholds = True
    return model


# FCOS knobs that DW-FCOS does not have (its assignment and losses replace them).
_FCOS_ONLY = (
    "center_sampling_radius", "focal_loss_alpha", "focal_loss_gamma", "cls_loss",
    "box_reg_loss", "loss_normalizer_init", "loss_normalizer_momentum", "guided_loss",
    "prior_init", "class_adaptive_thresholds",
)


def dw_fcos(model, box_refine=False):
    """FCOS -> DW-FCOS: Dual Weighting instead of FCOS's assignment, focal loss and
    centerness; the head's ``quality`` branch becomes the objectness (no target of its own),
    classification prior 0.02, regression bias 4.0, fixed Gaussian centre prior sigma 1.11;
    inference score sigmoid(cls) * sigmoid(obj), threshold 0.05, 1000 per level, NMS 0.6,
    100 detections. ``box_refine=True`` adds the box-refinement branch."""
    for key in _FCOS_ONLY:
        if key in model:
            del model[key]
    model._target_ = DWFCOS
    model.head.prior_prob = 0.02
    model.head.box_bias_init = 4.0
    model.head.box_refine = box_refine
    model.center_prior_sigma = 1.11
    model.pos_loss_weight = 0.25
    model.gt_chunk_size = 256
    model.test_score_thresh = 0.05
    model.test_topk_candidates = 1000
    model.test_nms_thresh = 0.6
    model.max_detections_per_image = 100
    return model


def small_object_anchors(model):
    """RetinaNet anchors for small objects (tree crowns of ~20-100 px, synthetic shapes of
    8-40 px): base size 2x the stride (16, 32, 64, 128, 256 on P3-P7, 3 octave scales, 3
    aspect ratios) instead of COCO's 4x (32-512), so that 16-40 px objects get IoU >= 0.5
    anchors on P3 instead of low-quality matches only."""
    model.anchor_generator.sizes = [
        [x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [16, 32, 64, 128, 256]
    ]
    return model
