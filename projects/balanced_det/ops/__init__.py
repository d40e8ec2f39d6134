"""Pure tensor functions: losses, ranks, weights and sampler index selection.

No detectron2 types, no config, no global state (GHM's EMA is a small module with buffers).
"""
from .balanced_l1 import balanced_l1_loss
from .box_refine import refine_ltrb
from .boxes import aligned_iou, encode_box_deltas
from .carl import carl_loss, carl_weights
from .dw import DWImageTerms, DWImageWeights, dw_image_terms, dw_image_weights, dw_losses
from .eql import eql_loss, eql_roi_losses, eql_weights, tail_classes
from .focal_star import sigmoid_focal_loss_star
from .ghm import GHMC, GHMR
from .hlr import hierarchical_rank, iou_hlr_rank, lexsort, local_rank, nms_cluster_local_rank
from .isr import (
    isr_n_select,
    isr_p_weights,
    isr_weights,
    renormalize_to_loss,
    unique_gt_ids_from_pairs,
)
from .noisy_anchor import noisy_anchor_soft_targets, soft_target_focal_loss, topn_candidates
from .points import (
    PointGrid,
    centerness_target,
    fcos_assign,
    fcos_scale_ranges,
    grid_inside_pairs,
    grid_points,
    point_box_ltrb,
    point_grid,
)
from .samplers import instance_balanced_pos_sample, iou_balanced_neg_sample, ohem_topk, random_choice
from .sampling_free import (
    class_adaptive_thresholds,
    guided_loss_ratio,
    sigmoid_prior_bias,
    softmax_prior_bias,
)
from .usw import (USW_FEATURE_DIMS, USW_MASK_FEATURE_DIMS, usw_features, usw_losses,
                  usw_mask_loss, usw_scores)

__all__ = [k for k in globals() if not k.startswith("_")]
