"""Turn a Faster / Mask R-CNN model config into a two-stage balanced-learning method.

Each function changes only the parts of its method (and says which), on any R-CNN model config
built from ``mask_rcnn_fpn.py`` / ``faster_rcnn_fpn.py`` (R50 or Lite0). The ROI head and box
predictor keep every detectron2 argument; a method is a plug-in object set on them
(``balanced_det.modeling.samplers`` / ``balanced_det.modeling.losses``). Method pages:
docs/methods/.
"""
from detectron2.config import LazyCall as L

from balanced_det.modeling.losses import CARL, BalancedL1Loss, GuidedLoss
from balanced_det.modeling.mask_head import WeightedMaskRCNNConvUpsampleHead
from balanced_det.modeling.meta_arch.rcnn import BalancedRCNN
from balanced_det.modeling.necks.balanced_fpn import BalancedFPN
from balanced_det.modeling.roi_heads import (
    BalancedFastRCNNOutputLayers,
    BalancedROIHeads,
    EQLFastRCNNOutputLayers,
)
from balanced_det.modeling.rpn import BalancedRPN
from balanced_det.modeling.samplers import (
    AllSampler,
    CombinedSampler,
    InstanceBalancedPosSampler,
    IoUBalancedNegSampler,
    ISRPWeighting,
    OHEMSampler,
    ScoreHLRSampler,
)
from balanced_det.modeling.usw import SampleWeightingNet

from ..optim import with_part_optimizer


def balanced_roi_heads(model, sampler=None):
    """``StandardROIHeads`` -> ``BalancedROIHeads(sampler=...)`` and the box predictor ->
    ``BalancedFastRCNNOutputLayers`` (identical to detectron2's until a plug-in is set)."""
    roi = model.roi_heads
    roi._target_ = BalancedROIHeads
    roi.sampler = sampler
    roi.box_predictor._target_ = BalancedFastRCNNOutputLayers
    return model


def ohem(model):
    """OHEM: ROI sampler only (512 ROIs, 128 hardest positives / the rest hardest negatives,
    no NMS). Everything else as the baseline."""
    return balanced_roi_heads(model, L(OHEMSampler)(nms_thresh=None))


def balanced_fpn(model, refine_level):
    """Balanced Feature Pyramid around the model's FPN; ``refine_level`` is the index of P4
    among the FPN outputs (2 for P2-P6, 1 for Lite0's P3-P6)."""
    model.backbone = L(BalancedFPN)(fpn=model.backbone, refine_level=refine_level,
                                    refine_type="non_local")
    return model


def libra(model, refine_level):
    """Libra R-CNN: Balanced FPN, instance-balanced positives + IoU-balanced negatives (3 bins,
    no floor), Balanced L1 box loss (alpha 0.5, gamma 1.5, beta 1.0). The RPN keeps
    detectron2's random sampling (mmdet additionally caps the RPN's negatives at 5x the
    positives; not done here)."""
    balanced_fpn(model, refine_level)
    balanced_roi_heads(model, L(CombinedSampler)(
        pos_sampler=L(InstanceBalancedPosSampler)(),
        neg_sampler=L(IoUBalancedNegSampler)(floor_thr=-1.0, floor_fraction=0.0, num_bins=3)))
    model.roi_heads.box_predictor.box_reg_loss = L(BalancedL1Loss)(alpha=0.5, gamma=1.5,
                                                                   beta=1.0)
    return model


def pisa(model, pre_nms_topk, post_nms_topk):
    """PISA: ISR-P (gamma 2, beta 0) + ISR-N / Score-HLR negatives (gamma 0.5, beta 0) + CARL
    (k 1, bias 0.2). As mmdet's PISA configs, and unlike the baseline: box loss Smooth L1
    beta = 1.0 (baseline: L1, beta 0) and more RPN proposals, (train, test) ``pre_nms_topk``
    per level and ``post_nms_topk`` per image (COCO: (2000, 2000) and (2000, 2000) instead of
    (2000, 1000) and (1000, 1000)). For an ablation of the sampling alone, set those three
    knobs back to the baseline's values."""
    balanced_roi_heads(model, L(ScoreHLRSampler)(gamma=0.5, beta=0.0, score_thresh=0.05,
                                                 iou_thresh=0.5))
    model.roi_heads.positive_weighting = L(ISRPWeighting)(gamma=2.0, beta=0.0)
    bp = model.roi_heads.box_predictor
    bp.carl = L(CARL)(k=1.0, bias=0.2)
    bp.smooth_l1_beta = 1.0
    model.proposal_generator.pre_nms_topk = tuple(pre_nms_topk)
    model.proposal_generator.post_nms_topk = tuple(post_nms_topk)
    return model


def sampling_free(model, num_train_proposals):
    """Sampling-Free: no sampling in the RPN or the ROI head, guided classification losses
    (w_cls 1 for the RPN, 2 for the ROI head), losses divided by the positives, optimal bias
    initialisation (RPN sigmoid, ROI softmax) and class-adaptive score thresholds from dataset
    statistics (``BalancedRCNN`` computes them before training; see ``train.dataset_stats``),
    ``num_train_proposals`` RPN proposals per image in training (COCO: 2000 instead of the
    baseline's 1000)."""
    model._target_ = BalancedRCNN
    rpn = model.proposal_generator
    rpn._target_ = BalancedRPN
    rpn.sampler = L(AllSampler)()
    rpn.loss_normalizer = "positives"
    rpn.guided_loss = L(GuidedLoss)(w_cls=1.0)
    rpn.prior_init = True
    rpn.post_nms_topk = (num_train_proposals, rpn.post_nms_topk[1])
    balanced_roi_heads(model, L(AllSampler)())
    bp = model.roi_heads.box_predictor
    bp.guided_loss = L(GuidedLoss)(w_cls=2.0)
    bp.box_reg_normalizer = "positives"
    bp.prior_init = True
    bp.class_adaptive_thresholds = True
    return model


#: the names of USW's weighting-network parameters (its own optimizer's part)
USW_PARAMS = r"(^|\.)sample_weighting\."


def usw(model, optimizer, lr=1e-3, weight_decay=1e-4):
    """Unified Sample Weighting: a ``SampleWeightingNet`` (hidden 64, init N(0, 1e-4), scores
    clamped to [-2, 2], lambda 0.5, pooled classification scores) on the ROI box predictor, and,
    as the authors' configs, Smooth L1 beta 1.0 (baseline: L1, beta 0; it is also the 4-d
    box-loss input of the network). The RPN is not weighted. With a mask head (Mask R-CNN, the
    authors' ``SWNMask``) the network also takes each positive's mask loss and weights the mask
    loss by its third score (``mask=True``, ``WeightedMaskRCNNConvUpsampleHead``).

    Returns the new optimizer config: the network trains with Adam (``lr`` 1e-3,
    ``weight_decay`` 1e-4), every other parameter with the baseline ``optimizer`` (unchanged,
    its arguments stay at the top level: ``optimizer.lr`` is still the detector's LR), one
    :class:`~balanced_det.engine.optim.CombinedOptimizer`; both follow the config's
    ``lr_multiplier`` and ``train.clip_grad_norm`` (one norm over all parameters)."""
    balanced_roi_heads(model, model.roi_heads.get("sampler"))
    bp = model.roi_heads.box_predictor
    bp.sample_weighting = sample_weighting_net()
    bp.smooth_l1_beta = 1.0
    if model.roi_heads.get("mask_head") is not None:
        bp.sample_weighting.mask = True
        model.roi_heads.mask_head._target_ = WeightedMaskRCNNConvUpsampleHead
    return usw_optimizer(optimizer, lr, weight_decay)


def sample_weighting_net():
    """USW's network with the authors' settings (two-stage and RetinaNet)."""
    return L(SampleWeightingNet)(hidden_dim=64, init_std=1e-4, lam=0.5, score_min=-2.0,
                                 score_max=2.0, cls_weighting="pooled")


def usw_optimizer(optimizer, lr=1e-3, weight_decay=1e-4):
    """Adam(``lr``, ``weight_decay``) on USW's network next to ``optimizer`` on the rest."""
    return with_part_optimizer(optimizer, "sample_weighting", USW_PARAMS, lr=lr,
                               weight_decay=weight_decay)


def eql(model, lambda_):
    """Equalization Loss: the ROI box predictor becomes ``EQLFastRCNNOutputLayers``, a sigmoid
    classifier over the C classes (no background logit, prior probability 0.001) trained with
    the equalization loss of tail threshold ``lambda_`` (LVIS v0.5: 0.00177, v1: 0.0011) on
    the class frequencies of the training set (``BalancedRCNN`` counts them before training);
    inference with sigmoid scores, score threshold 1e-4 and 300 detections per image, as the
    authors' LVIS configs. RPN, ROI sampling, box loss and mask head as the baseline."""
    model._target_ = BalancedRCNN
    balanced_roi_heads(model)
    bp = model.roi_heads.box_predictor
    bp._target_ = EQLFastRCNNOutputLayers
    bp.lambda_ = lambda_
    bp.test_score_thresh = 1e-4
    bp.test_topk_per_image = 300
    return model
