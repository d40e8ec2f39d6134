"""Unified Sample Weighting (USW; Cai et al., "Learning a Unified Sample Weighting Network for
Object Detection", CVPR 2020): the per-ROI inputs of the weighting network, its scores and the
weighted losses. See docs/methods/usw.md."""
from __future__ import annotations

from typing import Dict, Optional, Union

import torch
from torch import Tensor

__all__ = ["usw_features", "usw_scores", "usw_losses", "usw_mask_loss", "USW_FEATURE_DIMS",
           "USW_CE_INPUT",
           "USW_MASK_FEATURE_DIMS"]

#: widths of the input features, in order: IoU, GT-class probability, CE, 4-d box loss
USW_FEATURE_DIMS = (1, 1, 1, 4)
#: the input every sample carries (its cross entropy); negatives have zeros in all the others
USW_CE_INPUT = 2
#: with a mask head (the authors' Mask R-CNN): ... and the per-ROI mask loss
USW_MASK_FEATURE_DIMS = USW_FEATURE_DIMS + (1,)


def usw_features(num_rois: int, fg_inds: Tensor, ious: Tensor, probs_gt: Tensor, ce: Tensor,
                 box_loss: Tensor, mask_loss: Optional[Tensor] = None) -> Tensor:
    """The (R, 7) detached inputs ``[iou, p_gt, CE, l_reg (4)]`` of every sample (sampled ROI
    or anchor); with ``mask_loss`` (R, 8): ``[..., l_mask]``.

    Positives (rows ``fg_inds``) carry the IoU of their regressed box with their GT, the
    softmax probability of their GT class, their 4 box-loss coordinates (and their mask
    loss); negatives carry zeros there. Every ROI carries its own cross entropy.

    Args:
        num_rois: R.
        fg_inds: (P,) indices of the positives among the R ROIs.
        ious, probs_gt: (P,); ce: (R,); box_loss: (P, 4); mask_loss: (P,) or None.
    Returns:
        float32 (R, 7) or (R, 8), detached.
    """
    ce = ce.detach().float()
    parts = [ious.detach().float().reshape(-1, 1), probs_gt.detach().float().reshape(-1, 1),
             box_loss.detach().float().reshape(-1, 4)]
    if mask_loss is not None:
        parts.append(mask_loss.detach().float().reshape(-1, 1))
    fg = torch.cat(parts, dim=1)
    full = ce.new_zeros((num_rois, fg.shape[1])).index_copy(0, fg_inds, fg)
    return torch.cat([full[:, :2], ce.reshape(-1, 1), full[:, 2:]], dim=1)


def _group_mean(s: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``s`` over ``mask`` (0 for an empty mask), without a host sync."""
    m = mask.to(s.dtype)
    return (s * m).sum() / m.sum().clamp(min=1.0)


def usw_scores(raw: Tensor, fg_mask: Tensor, s_min: float = -2.0, s_max: float = 2.0,
               pooled: bool = True, groups: bool = True) -> Dict[str, Tensor]:
    """Clamped scores ``s = clamp(raw, s_min, s_max)`` (defaults [-2, 2]) and the regularised
    classification term.

    ``groups`` (the ROI head): the term is ``s_pos + s_neg``, the means of the positives' and
    of the negatives' clamped classification scores, and with ``pooled`` (the authors' code)
    every positive's classification score is ``s_pos``, every negative's ``s_neg``. Otherwise
    (RetinaNet): the term is the mean ``s_all`` over all samples, and ``pooled`` gives every
    sample ``s_all``. Gradients flow through the means.

    Args:
        raw: (R, 2) network outputs (classification, regression); (R, 3) with a mask score.
        fg_mask: (R,) bool, positives.
    Returns:
        dict of float32 tensors: ``cls`` (R,), ``reg`` (R,), (``mask`` (R,) for 3 outputs),
        ``cls_term`` (scalar; 0 for an empty group), ``cls_pos``, ``cls_neg`` (group means,
        for logging).
    """
    s = raw.float().clamp(min=s_min, max=s_max)
    s_cls, s_reg = s[:, 0], s[:, 1]
    extra = {"mask": s[:, 2]} if s.shape[1] > 2 else {}
    pos, neg = _group_mean(s_cls, fg_mask), _group_mean(s_cls, ~fg_mask)
    if groups:
        term = pos + neg
        if pooled:
            s_cls = torch.where(fg_mask, pos, neg)
    else:
        term = s_cls.sum() / max(s_cls.numel(), 1)
        if pooled:
            s_cls = term.expand_as(s_cls)
    return {"cls": s_cls, "reg": s_reg, "cls_term": term, "cls_pos": pos, "cls_neg": neg,
            **extra}


def usw_losses(
    ce: Tensor,
    box_loss: Tensor,
    fg_inds: Tensor,
    fg_mask: Tensor,
    scores: Dict[str, Tensor],
    lam: float = 0.5,
    reg_normalizer: Union[float, Tensor] = 1.0,
    cls_weights: Optional[Tensor] = None,
    cls_normalizer: Optional[Union[float, Tensor]] = None,
) -> Dict[str, Tensor]:
    """The weighted task losses and the regularisers::

        w = exp(-s)  (not detached)
        loss_cls     = sum_i w_cls,i c_i CE_i / cls_normalizer       (c_i: cls_weights or 1)
        loss_box_reg = sum_{i in pos} w_reg,i sum_k l_ik / reg_normalizer
        loss_usw_cls = lam cls_term        loss_usw_reg = lam mean_{i in pos} s_reg,i
        (with a mask score) loss_usw_mask = lam mean_{i in pos} s_mask,i

    (``cls_term``: :func:`usw_scores`'s, ``s_pos + s_neg`` in the ROI head.) The mask loss
    itself is weighted by the mask head (:func:`usw_mask_loss`).

    Args:
        ce: (R,) classification loss of every sample (ROI head: its cross entropy), with its
            graph to the classifier.
        box_loss: (P, 4) element-wise box loss of the positives (with its graph).
        fg_inds: (P,) positives' indices; fg_mask: (R,) bool, positives.
        scores: :func:`usw_scores`'s output.
        lam: regulariser weight (default 0.5, every term of the authors' code).
        reg_normalizer: the host's box-loss normaliser (R: the sampled ROIs).
        cls_weights: (R,) other per-sample classification weights (a sampler's) or None.
        cls_normalizer: the classification divisor; None: R (the sampled ROIs).
    Returns:
        dict of float32 scalars; zero ROIs / positives give finite zeros with a graph.
    """
    num_rois = ce.shape[0]
    w_cls = torch.exp(-scores["cls"])
    if cls_weights is not None:
        w_cls = w_cls * cls_weights.float()
    if cls_normalizer is None:
        cls_normalizer = max(num_rois, 1)
    loss_cls = (w_cls * ce.float()).sum() / cls_normalizer
    w_reg = torch.exp(-scores["reg"][fg_inds])
    loss_reg = (w_reg * box_loss.float().sum(dim=1)).sum() / reg_normalizer
    out = {
        "loss_cls": loss_cls,
        "loss_box_reg": loss_reg,
        "loss_usw_cls": lam * scores["cls_term"],
        "loss_usw_reg": lam * _group_mean(scores["reg"], fg_mask),
    }
    if "mask" in scores:
        out["loss_usw_mask"] = lam * _group_mean(scores["mask"], fg_mask)
    return out


def usw_mask_loss(roi_mask_losses: Tensor, weights: Optional[Tensor]) -> Tensor:
    """``L_mask = sum_i w_mask,i l_i / P``: the mean over the P positives (and their 28 x 28
    pixels, ``l_i`` being each one's per-pixel mean BCE) of the weighted mask loss; weights
    None: the plain mean (detectron2's ``mask_rcnn_loss``). No positive: 0 with a graph."""
    losses = roi_mask_losses.float()
    if weights is not None:
        losses = losses * weights.float()
    return losses.sum() / max(losses.numel(), 1)
