"""detectron2 adapters: backbones, necks, heads and meta-architectures.

Importing this module registers the ROI heads and RPN in detectron2's registries.
"""
from .assigners import AnchorAssigner, AnchorAssignment, NoisyAnchorAssigner
from .backbone import EfficientNetLite0, build_efficientnet_lite0_fpn
from .dense_heads import FCOSStyleHead
from .losses import (
    CARL,
    BalancedL1Loss,
    BoxRegressionLoss,
    ClassificationLoss,
    FocalLoss,
    FocalLossStar,
    GHMCLoss,
    GHMRLoss,
    GIoULoss,
    GuidedLoss,
    SigmoidBCELoss,
    SmoothL1Loss,
    SoftTargetFocalLoss,
)
from .mask_head import WeightedMaskRCNNConvUpsampleHead
from .meta_arch.dw_fcos import DWFCOS
from .meta_arch.fcos import FCOS
from .meta_arch.rcnn import BalancedRCNN
from .meta_arch.retinanet import BalancedRetinaNet
from .necks.balanced_fpn import BalancedFPN
from .roi_heads import BalancedFastRCNNOutputLayers, BalancedROIHeads
from .rpn import BalancedRPN
from .samplers import (
    AllSampler,
    CombinedSampler,
    InstanceBalancedPosSampler,
    IoUBalancedNegSampler,
    ISRPWeighting,
    NegativeSampler,
    OHEMSampler,
    PositiveSampler,
    RandomNegSampler,
    RandomPosSampler,
    RandomSampler,
    Sampler,
    ScoreHLRSampler,
)
from .sampling_free import ClassScoreThresholds

__all__ = [k for k in globals() if not k.startswith("_")]
