"""Dual Weighting (Li et al., "A Dual Weighting Label Assignment Scheme for Object
Detection", CVPR 2022): candidate bags, centre prior, positive and negative weights and the
DW losses of an FCOS-style head (SPEC 4).

Per image, with points ``i`` (P), ground truths ``j`` (G), joint scores
``s = sigmoid(cls) * sigmoid(obj)`` (P, C) and decoded predicted boxes (P, 4):
::

    bag[i, j]   = point i strictly inside box j (all levels, no scale ranges)
    prior[i, j] = prod_{x,y} exp(-((p_i - c_j) / stride_i)^2 / (2 sigma^2)) on the bag, else 0
    p_cls       = s[i, label_j]
    p_loc       = exp(-5 GIoU_loss(box_i, gt_j))
    v           = p_cls p_loc
    w_pos       = exp(5 v) v prior / sum_i(exp(3 v) v prior).clamp(min=1e-12)      (detached)
    t(x)        = (4/3)(1 - x^2)
    y[i, j]     = (t(iou) - min_bag t + eps) / (min(1, max_bag t) - min_bag t + eps)
    y[i, j]     = 1 where iou < 0.5
    P_neg       = ones(P, C); P_neg[i, label_j] = min over bags containing i of y[i, j]
    L_pos_cls   = 0.25 sum w_pos BCE(p_cls, 1) / num_gt
    L_pos_loc   = 0.25 sum w_pos BCE(p_loc, 1) / num_gt  (BCE(p_loc, 1) = 5 GIoU_loss exactly)
    L_neg       = sum P_neg s^2 BCE(s, 0) / max(1, sum (1 - P_neg))

Readings of the reference (strongwolf/DW ``dw_head.py``), and where we differ:

* The 5-versus-3 exponents of ``w_pos`` are the reference's (SPEC: follow the code).
* Centre prior: the reference's ``CenterPrior`` with mean 0 and ``sigma = 1.11`` for every
  class and axis, fixed (``requires_grad=False``); Gaussian ``exp(-d^2 / (2 sigma^2))``.
* ``eps = 1e-12`` as the reference's ``EPS`` in both the negative-weight normalisation and
  the positive-weight denominator clamp.
* A point in the bags of several GTs of the same class: the reference keeps the value of
  the last GT written (an arbitrary index order); we take the minimum ``y`` (the strongest
  "this is a positive" signal), so the result does not depend on GT order.
* The reference loops over GTs in Python; here everything is vectorised over (P, G):
  per-GT min/max over the bag are masked ``amin``/``amax`` over the point axis and the
  scatter into ``P_neg`` is one ``scatter_reduce(amin)``.
* ``sum_j w_pos[i, j] BCE(s[i, label_j], 1)`` is computed as ``sum_{i,c} W[i, c] BCE(s[i, c], 1)``
  with ``W[i, c] = sum_{j: label_j = c} w_pos[i, j]`` (exactly equal, gradient included),
  so the classification part never holds a (P, G) tensor for backward.
* BCE on probabilities: ``-log(clamp(p, min=1e-12))``, ``-log(clamp(1 - s, min=1e-12))``
  (torch's ``binary_cross_entropy`` clamps the log at -100 instead; in float32 the two only
  differ for ``s`` exactly 0 or 1, where the gradient through the sigmoid is 0 anyway).
* GIoU / IoU of every point's predicted box with every GT use ``eps = 1e-6`` on union and
  enclosing area (mmdet's ``GIoULoss`` / ``bbox_overlaps`` default), so degenerate boxes
  stay finite.

Memory: the positive and negative weights need (P, G) matrices per image (P ~ 20k points
for an 800 x 1333 image on P3-P7). With ``gt_chunk_size`` the GTs are processed in chunks
of at most that many: the no-grad (P, G) work is done chunk by chunk, and the localisation
term of each chunk runs under ``torch.utils.checkpoint`` (recomputed in backward), so the
peak memory is O(P x gt_chunk_size + P x C) whatever G is. With G <= ``gt_chunk_size``
(default 256, i.e. every COCO image) there is one chunk and no recomputation.

All maths in float32 (inputs are cast); no host synchronisation, no loop over points or
GTs (the chunk loop runs ``ceil(G / gt_chunk_size)`` times, once for ordinary images).
"""

from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .points import point_box_ltrb

__all__ = [
    "dw_candidate_bag",
    "dw_center_prior",
    "dw_pairwise_iou_giou",
    "dw_positive_weights",
    "dw_negative_weights",
    "DWImageTerms",
    "dw_image_terms",
    "dw_losses",
]

EPS = 1e-12  # the reference's EPS: negative-weight normalisation, w_pos denominator, BCE clamp
BOX_EPS = 1e-6  # union / enclosing-area floor of IoU and GIoU (mmdet default)


def dw_candidate_bag(points: Tensor, gt_boxes: Tensor) -> Tensor:
    """Candidate bag: ``bag[i, j]`` = point i strictly inside box j (XYXY), every level.

    Args:
        points: (P, 2) (x, y) in image pixels.
        gt_boxes: (G, 4) XYXY.
    Returns:
        (P, G) bool. Points on a box edge are outside.
    """
    if gt_boxes.shape[0] == 0:
        return torch.zeros(points.shape[0], 0, dtype=torch.bool, device=points.device)
    return point_box_ltrb(points.float(), gt_boxes.float()).amin(dim=2) > 0


def dw_center_prior(
    points: Tensor,
    strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    sigma: Union[float, Tensor] = 1.11,
    bag: Optional[Tensor] = None,
) -> Tensor:
    """Centre prior ``prod_{a in x,y} exp(-((p_a - c_a) / stride)^2 / (2 sigma_{label, a}^2))``
    (Gaussian with mean 0; SPEC 4, the reference's ``CenterPrior`` with soft prior), 0 outside
    the candidate bag.

    Args:
        points: (P, 2); strides: (P,) stride of each point's level.
        gt_boxes: (G, 4) XYXY; gt_labels: (G,) int64 class ids.
        sigma: a float (every class and axis; default 1.11, the reference's fixed value) or a
            (C, 2) tensor of per-class (sigma_x, sigma_y).
        bag: (P, G) bool from :func:`dw_candidate_bag` (computed when ``None``).
    Returns:
        (P, G) float32 in [0, 1]: 1 at the box centre, ``exp(-1 / (2 sigma^2))`` (0.6664 for
        1.11) one stride away along one axis.
    """
    pts = points.float()
    boxes = gt_boxes.float()
    if bag is None:
        bag = dw_candidate_bag(pts, boxes)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # (G, 2)
    if isinstance(sigma, Tensor):
        sig = sigma.to(device=pts.device, dtype=torch.float32)
        if sig.dim() != 2 or sig.shape[1] != 2:
            raise ValueError(
                f"sigma must be a float or a (C, 2) tensor, got shape {tuple(sig.shape)}"
            )
        sig = sig[gt_labels]  # (G, 2)
    else:
        sig = torch.full((boxes.shape[0], 2), float(sigma), device=pts.device)
    d = (pts[:, None, :] - centre[None]) / strides.float()[:, None, None]  # (P, G, 2)
    prior = torch.exp(-(d * d) / (2 * sig[None] ** 2)).prod(dim=2)
    return torch.where(bag, prior, torch.zeros_like(prior))


def dw_pairwise_iou_giou(
    pred_boxes: Tensor, gt_boxes: Tensor, eps: float = BOX_EPS
) -> Tuple[Tensor, Tensor]:
    """IoU and GIoU loss of every predicted box with every GT box.

    ``IoU = I / max(U, eps)``, ``GIoU_loss = 1 - IoU + (E - U) / max(E, eps)`` (E = area of
    the smallest enclosing box).

    Args:
        pred_boxes: (P, 4) XYXY (with grad); gt_boxes: (G, 4) XYXY.
    Returns:
        ``(iou, giou_loss)``, both (P, G) float32; differentiable w.r.t. ``pred_boxes``.
    """
    a = pred_boxes.float()[:, None, :]
    b = gt_boxes.float()[None, :, :]
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (area_a + area_b - inter).clamp(min=eps)
    iou = inter / union
    elt = torch.minimum(a[..., :2], b[..., :2])
    erb = torch.maximum(a[..., 2:], b[..., 2:])
    ewh = (erb - elt).clamp(min=0)
    enclose = (ewh[..., 0] * ewh[..., 1]).clamp(min=eps)
    giou_loss = 1 - iou + (enclose - union) / enclose
    return iou, giou_loss


@torch.no_grad()
def dw_positive_weights(p_cls: Tensor, p_loc: Tensor, prior: Tensor, bag: Tensor) -> Tensor:
    """Positive weights (SPEC 4, detached):
    ``v = p_cls p_loc``, ``w = exp(5 v) v prior / sum_points(exp(3 v) v prior).clamp(min=1e-12)``,
    0 outside the bag. The 5-versus-3 exponents are the reference's (they raise the positive
    loss relative to the negative loss).

    Args:
        p_cls, p_loc, prior: (P, G); bag: (P, G) bool.
    Returns:
        (P, G) float32, no grad. A GT with an empty bag has an all-zero column.
    """
    v = p_cls.detach().float() * p_loc.detach().float()
    pr = torch.where(bag, prior.detach().float(), torch.zeros_like(v))
    vp = v * pr
    num = torch.exp(5 * v) * vp
    den = (torch.exp(3 * v) * vp).sum(dim=0, keepdim=True).clamp(min=EPS)
    return torch.where(bag, num / den, torch.zeros_like(num))


def _negative_y(ious: Tensor, bag: Tensor, eps: float = EPS) -> Tensor:
    """Per-GT normalised negative weight y (P, G) on the bag (1 elsewhere)."""
    iou = ious.detach().float()
    t = (4.0 / 3.0) * (1 - iou * iou)
    inf = torch.full_like(t, math.inf)
    tmin = torch.where(bag, t, inf).amin(dim=0, keepdim=True)
    tmax = torch.where(bag, t, -inf).amax(dim=0, keepdim=True)
    empty = ~bag.any(dim=0, keepdim=True)
    tmin = torch.where(empty, torch.zeros_like(tmin), tmin)
    tmax = torch.where(empty, torch.ones_like(tmax), tmax)
    y = (t - tmin + eps) / (tmax.clamp(max=1.0) - tmin + eps)
    y = torch.where(iou < 0.5, torch.ones_like(y), y)
    return torch.where(bag, y, torch.ones_like(y))


@torch.no_grad()
def dw_negative_weights(
    ious: Tensor,
    bag: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    eps: float = EPS,
    out: Optional[Tensor] = None,
) -> Tensor:
    """Negative weights ``P_neg`` (SPEC 4), detached.

    ``t(x) = (4/3)(1 - x^2)`` (passes (0.5, 1) and (1, 0)); per GT over its bag,
    ``y = (t(iou) - min t + eps) / (min(1, max t) - min t + eps)``, ``y = 1`` where
    ``iou < 0.5``; ``P_neg = ones(P, C)``, ``P_neg[i, label_j] = min_j y[i, j]`` over the GTs
    whose bag contains i (the reference: last GT wins; we take the minimum).

    Args:
        ious: (P, G) IoU of each point's predicted box with each GT (no grad needed).
        bag: (P, G) bool; gt_labels: (G,) int64; num_classes: C.
        eps: the reference's 1e-12.
        out: optional (P, C) tensor to reduce into (min) instead of ones (for GT chunks).
    Returns:
        (P, C) float32 in [0, 1].
    """
    P = ious.shape[0]
    if out is None:
        out = torch.ones(P, num_classes, device=ious.device, dtype=torch.float32)
    if ious.shape[1] == 0:
        return out
    y = _negative_y(ious, bag, eps)
    index = gt_labels.to(device=ious.device, dtype=torch.long)[None, :].expand(P, -1)
    return out.scatter_reduce(1, index, y, reduce="amin", include_self=True)


class DWImageTerms(NamedTuple):
    """Un-normalised DW loss sums of one image (scalars, float32)."""

    pos_cls: Tensor  # sum w_pos BCE(p_cls, 1)            (with grad)
    pos_loc: Tensor  # sum w_pos BCE(p_loc, 1)            (with grad)
    neg: Tensor  # sum P_neg s^2 BCE(s, 0)                (with grad)
    neg_norm: Tensor  # sum (1 - P_neg)                   (detached)
    num_gt: Tensor  # G                                   (detached)
    pos_weight: Optional[Tensor] = None  # sum w_pos, for logging (detached)


def _loc_term(pred_boxes: Tensor, gt_boxes: Tensor, w_pos: Tensor) -> Tensor:
    """sum w_pos 5 GIoU_loss over (P, G_chunk)."""
    _, giou_loss = dw_pairwise_iou_giou(pred_boxes, gt_boxes)
    return (w_pos * (5.0 * giou_loss)).sum()


def dw_image_terms(
    scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    sigma: Union[float, Tensor] = 1.11,
    gt_chunk_size: Optional[int] = 256,
) -> DWImageTerms:
    """DW loss terms of one image, before normalisation (SPEC 4).

    Args:
        scores: (P, C) joint scores ``s = sigmoid(cls) * sigmoid(obj)`` (with grad).
        pred_boxes: (P, 4) decoded predicted boxes XYXY in pixels (with grad).
        points: (P, 2) point coordinates; strides: (P,) their strides.
        gt_boxes: (G, 4) XYXY; gt_labels: (G,) int64 in [0, C).
        sigma: centre-prior sigma (float or (C, 2)), default 1.11.
        gt_chunk_size: process at most this many GTs at a time (``None``: all at once);
            see the module docstring on memory.
    Returns:
        :class:`DWImageTerms`. With zero GTs: ``pos_cls = pos_loc = 0`` attached to the
        graph, ``P_neg = 1`` everywhere (``neg`` is the plain weighted negative loss),
        ``neg_norm = 0``.
    """
    s = scores.float()
    boxes = pred_boxes.float()
    pts = points.float()
    strd = strides.float()
    gtb = gt_boxes.float()
    labels = gt_labels.to(device=s.device, dtype=torch.long)
    P, C = s.shape
    G = gtb.shape[0]
    if gt_chunk_size is not None and gt_chunk_size < 1:
        raise ValueError(f"gt_chunk_size must be >= 1 or None, got {gt_chunk_size!r}")
    chunk = G if gt_chunk_size is None else min(G, int(gt_chunk_size))

    neg_w = torch.ones(P, C, device=s.device, dtype=torch.float32)
    # W[i, c] = sum_{j: label_j = c} w_pos[i, j]
    cls_w = torch.zeros(P, C, device=s.device, dtype=torch.float32)
    pos_loc = boxes.sum() * 0.0
    s_det = s.detach()
    for start in range(0, G, max(chunk, 1)):
        gb = gtb[start : start + chunk]
        gl = labels[start : start + chunk]
        with torch.no_grad():
            bag = dw_candidate_bag(pts, gb)
            prior = dw_center_prior(pts, strd, gb, gl, sigma, bag)
            iou, giou_loss = dw_pairwise_iou_giou(boxes.detach(), gb)
            p_loc = torch.exp(-5.0 * giou_loss)
            p_cls = s_det[:, gl]
            w_pos = dw_positive_weights(p_cls, p_loc, prior, bag)
            neg_w = dw_negative_weights(iou, bag, gl, C, out=neg_w)
            cls_w.scatter_add_(1, gl[None, :].expand(P, -1), w_pos)
        if chunk < G and torch.is_grad_enabled() and boxes.requires_grad:
            pos_loc = pos_loc + checkpoint(_loc_term, boxes, gb, w_pos, use_reentrant=False)
        else:
            pos_loc = pos_loc + _loc_term(boxes, gb, w_pos)

    pos_cls = (cls_w * -torch.log(s.clamp(min=EPS))).sum()
    neg = (neg_w * s * s * -torch.log((1 - s).clamp(min=EPS))).sum()
    neg_norm = (1 - neg_w).sum()
    num_gt = torch.full((), float(G), device=s.device)  # a fill kernel, no host->device copy
    return DWImageTerms(pos_cls, pos_loc, neg, neg_norm, num_gt, cls_w.sum())


def dw_losses(
    terms: Sequence[DWImageTerms],
    num_gt: Optional[Tensor] = None,
    neg_norm: Optional[Tensor] = None,
    pos_loss_weight: float = 0.25,
) -> Dict[str, Tensor]:
    """Normalised DW losses over a batch (SPEC 4).

    ``loss_cls_pos = 0.25 sum pos_cls / max(1, num_gt)``,
    ``loss_loc = 0.25 sum pos_loc / max(1, num_gt)``,
    ``loss_cls_neg = sum neg / max(1, neg_norm)``.

    Args:
        terms: one :class:`DWImageTerms` per image.
        num_gt, neg_norm: the normalisers. In distributed training pass the **mean over
            processes** of the per-process sums (the reference's ``reduce_mean``), so DDP's
            gradient averaging gives the global-batch loss. ``None``: the local sums.
        pos_loss_weight: the reference's 0.25.
    Returns:
        ``{"loss_cls_pos", "loss_loc", "loss_cls_neg"}`` float32 scalars.
    """
    if len(terms) == 0:
        raise ValueError("dw_losses needs at least one image's terms")
    if num_gt is None:
        num_gt = torch.stack([t.num_gt for t in terms]).sum()
    if neg_norm is None:
        neg_norm = torch.stack([t.neg_norm for t in terms]).sum()
    num_gt = torch.as_tensor(num_gt, dtype=torch.float32, device=terms[0].pos_cls.device).clamp(
        min=1.0
    )
    neg_norm = torch.as_tensor(neg_norm, dtype=torch.float32, device=terms[0].pos_cls.device).clamp(
        min=1.0
    )
    pos_cls = torch.stack([t.pos_cls for t in terms]).sum()
    pos_loc = torch.stack([t.pos_loc for t in terms]).sum()
    neg = torch.stack([t.neg for t in terms]).sum()
    return {
        "loss_cls_pos": pos_loss_weight * pos_cls / num_gt,
        "loss_loc": pos_loss_weight * pos_loc / num_gt,
        "loss_cls_neg": neg / neg_norm,
    }
