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
* The reference loops over GTs in Python; here there is no loop over GTs or points (see
  "Computation" below): per-GT sums / min / max over the bag are ``index_add_`` /
  ``scatter_reduce(amin / amax)`` over the bag pairs, and the scatter into ``P_neg`` is one
  ``scatter_reduce(amin)``.
* BCE on probabilities: ``-log(clamp(p, min=1e-12))``, ``-log(clamp(1 - s, min=1e-12))``
  (torch's ``binary_cross_entropy`` clamps the log at -100 instead; in float32 the two only
  differ for ``s`` exactly 0 or 1, where the gradient through the sigmoid is 0 anyway).
* GIoU / IoU of every point's predicted box with every GT use ``eps = 1e-6`` on union and
  enclosing area (mmdet's ``GIoULoss`` / ``bbox_overlaps`` default), so degenerate boxes
  stay finite.

Computation (:func:`dw_image_terms`, :func:`dw_image_weights`): every (point, GT) quantity
above is 0 (``w_pos``) or 1 (``y``) outside the candidate bags, and a point outside every box
has ``P_neg = 1`` and no positive weight. So the work is done on the K (point, GT) pairs of the
bags only -- ``bag.nonzero()`` (GT-major), then gathers, per-pair IoU / GIoU / prior, and per-GT
reductions by ``index_add_`` / ``scatter_reduce`` indexed by the pair's GT; ``P_neg`` is a
``(P, C)`` tensor of ones with the pairs' ``y`` scattered in (``amin``). K is the summed bag size
(~ 6k pairs for 15 COCO-sized GTs on 22 400 points, against P x G = 336k). The results equal the
dense (P, G) functions of this module (kept as the readable form and for tests) up to float32
summation order in the per-GT denominators:

* ``sum_j w_pos[i, j] BCE(s[i, label_j], 1)`` is a sum over the pairs of
  ``w_k * -log(s[pi_k, label_k])`` (a gather of K scores; its backward scatters into the
  (P, C) gradient), exactly the dense ``sum_{i,c} W[i, c] BCE(s[i, c], 1)`` with
  ``W[i, c] = sum_{j: label_j = c} w_pos[i, j]``.
* The localisation term ``sum_k w_k 5 GIoU_loss(box_{pi_k}, gt_{gj_k})`` keeps its graph to the
  predicted boxes (the weights use the same GIoU detached). The negative term stays over all
  P x C scores, as one fused autograd function (forward ``sum P_neg s^2 -log(clamp(1 - s))``,
  backward ``P_neg (2 s L + s^2 / (1 - s))``, the gradient autograd would form through the
  same expression, in a few (P, C) passes instead of a chain of products).
* Host synchronisation: ``nonzero`` (K is data-dependent) is the only one, once per image
  (once per GT chunk when an image has more than ``gt_chunk_size`` GTs). Everything else stays
  on the device; no loop over points or GTs.

Memory: the bag test works on (G, P) float temporaries (a few); with ``gt_chunk_size`` the GTs
are processed in chunks of at most that many, each with its own ``nonzero``, so the transient
memory is O(P x gt_chunk_size) for the bag test plus O(K_chunk) floats for the chunk's pairs
(K_chunk <= P x gt_chunk_size, in practice the chunk's summed bag size), plus O(P x C) for
``P_neg`` and the score-sized terms. What is kept for backward is O(K), K the image's summed
bag size (<= P x G only if every box covers every point): with one chunk the pairs' GIoU graph
(~ 20 floats per pair); with several chunks the localisation term of each chunk runs under
``torch.utils.checkpoint`` (recomputed in backward), keeping ~ 40 bytes per pair (point and GT
indices, weight, score key). With G <= ``gt_chunk_size`` (default 256, i.e. every COCO image)
there is one chunk and no recomputation.

All maths in float32 (inputs are cast).
"""

from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "dw_candidate_bag",
    "dw_center_prior",
    "dw_pairwise_iou_giou",
    "dw_positive_weights",
    "dw_negative_weights",
    "DWImageWeights",
    "dw_image_weights",
    "DWImageTerms",
    "dw_image_terms",
    "dw_losses",
]

EPS = 1e-12  # the reference's EPS: negative-weight normalisation, w_pos denominator, BCE clamp
BOX_EPS = 1e-6  # union / enclosing-area floor of IoU and GIoU (mmdet default)


def dw_candidate_bag(points: Tensor, gt_boxes: Tensor) -> Tensor:
    """Candidate bag: ``bag[i, j]`` = point i strictly inside box j (XYXY), every level
    (all four ``ltrb`` distances > 0).

    Args:
        points: (P, 2) (x, y) in image pixels.
        gt_boxes: (G, 4) XYXY.
    Returns:
        (P, G) bool. Points on a box edge are outside.
    """
    pts = points.float()
    return _inside_gt_major(pts[:, 0], pts[:, 1], gt_boxes.float()).t()


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
    return _iou_giou(pred_boxes.float().t()[:, :, None], gt_boxes.float().t()[:, None, :], eps)


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


class DWImageWeights(NamedTuple):
    """DW weights of one image in sparse form (detached, float32).

    The positive weights are nonzero only on the candidate bags, so they are given on the
    ``K`` (point, GT) pairs of the bags (every point strictly inside every box), ordered by GT
    then point; ``w_pos[point_idx[k], gt_idx[k]] = pos[k]`` and 0 elsewhere.
    """

    point_idx: Tensor  # (K,) int64
    gt_idx: Tensor  # (K,) int64
    pos: Tensor  # (K,) float32 w_pos of each bag pair
    neg: Tensor  # (P, C) float32 P_neg


class DWImageTerms(NamedTuple):
    """Un-normalised DW loss sums of one image (scalars, float32)."""

    pos_cls: Tensor  # sum w_pos BCE(p_cls, 1)            (with grad)
    pos_loc: Tensor  # sum w_pos BCE(p_loc, 1)            (with grad)
    neg: Tensor  # sum P_neg s^2 BCE(s, 0)                (with grad)
    neg_norm: Tensor  # sum (1 - P_neg)                   (detached)
    num_gt: Tensor  # G                                   (detached)
    pos_weight: Optional[Tensor] = None  # sum w_pos, for logging (detached)


def _iou_giou(a, b, eps: float = BOX_EPS) -> Tuple[Tensor, Tensor]:
    """IoU and GIoU loss, element by element, of boxes given coordinate-major: ``a`` and ``b``
    unpack into ``x1, y1, x2, y2`` tensors (mutually broadcastable). The formula of
    :func:`dw_pairwise_iou_giou`; on contiguous coordinate rows the elementwise kernels
    vectorise (a (K, 4) layout makes every op strided)."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    union = (area_a + area_b - inter).clamp(min=eps)
    iou = inter / union
    ew = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)).clamp(min=0)
    eh = (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)).clamp(min=0)
    enclose = (ew * eh).clamp(min=eps)
    giou_loss = 1 - iou + (enclose - union) / enclose
    return iou, giou_loss


def _inside_gt_major(x: Tensor, y: Tensor, gt_boxes: Tensor) -> Tensor:
    """(G, P) bool, point (x, y) strictly inside box: ``min(x - x1, x2 - x, y - y1, y2 - y) > 0``
    (all four ``ltrb`` distances > 0), GT-major so that every kernel runs contiguously over the
    points (float ``minimum`` also vectorises better than four bool comparisons)."""
    gb = gt_boxes[:, :, None]
    m = torch.minimum(x - gb[:, 0], gb[:, 2] - x)
    m = torch.minimum(m, torch.minimum(y - gb[:, 1], gb[:, 3] - y))
    return m > 0


def _columns(pts: Tensor) -> Tuple[Tensor, Tensor]:
    """(x, y) of (P, 2) points as two contiguous (P,) tensors (cheaper than a transpose copy)."""
    return pts[:, 0].contiguous(), pts[:, 1].contiguous()


class _ChunkPairs(NamedTuple):
    pi: Tensor  # (K,) point index
    gj: Tensor  # (K,) GT index inside the chunk
    keys: Tensor  # (K,) flat index pi * C + label into the (P, C) score matrix
    w: Tensor  # (K,) w_pos, detached
    giou: Optional[Tensor]  # (K,) GIoU loss (when asked for), else None


def _chunk_pairs(
    s_flat: Tensor,
    C: int,
    boxes_t: Tensor,
    pts_t: Sequence[Tensor],
    strd: Tensor,
    gb: Tensor,
    gl: Tensor,
    sig: Tensor,
    neg_flat: Tensor,
    keep_giou: bool,
) -> _ChunkPairs:
    """DW weights of one GT chunk on its bag pairs.

    Args:
        s_flat: (P * C) detached scores; boxes_t: (4, P) predicted boxes coordinate-major (a
            transposed view); pts_t: ``(x, y)``, each (P,) contiguous; strd: (P,).
        gb, gl, sig: the chunk's GT boxes (Gc, 4), labels (Gc,) and prior sigmas (Gc, 2).
        neg_flat: (P * C) ``P_neg``, reduced in place (``amin``) with the chunk's ``y``.
        keep_giou: return the pairs' GIoU loss, with its graph to ``boxes_t`` when grad mode is
            on (the weights use it detached).
    """
    Gc = gb.shape[0]
    with torch.no_grad():
        # the bag pairs, GT-major; nonzero is the host synchronisation (K is data-dependent)
        gj, pi = _inside_gt_major(pts_t[0], pts_t[1], gb).nonzero().unbind(1)
        keys = pi * C + gl.index_select(0, gj)
        gbt = gb.t()
        g = [gbt[c].index_select(0, gj) for c in range(4)]  # x1, y1, x2, y2 of each pair's GT
    with torch.set_grad_enabled(keep_giou and torch.is_grad_enabled()):
        iou, giou = _iou_giou([boxes_t[c].index_select(0, pi) for c in range(4)], g)
    with torch.no_grad():
        iou = iou.detach()
        # centre prior: prod over x, y of exp(-((p - c) / stride)^2 / (2 sigma^2))
        st = strd.index_select(0, pi)
        sgt = sig.t()
        prior = None
        for a in range(2):  # x, y
            d = (pts_t[a].index_select(0, pi) - (g[a] + g[a + 2]) / 2) / st
            e = torch.exp(-(d * d) / (2 * sgt[a].index_select(0, gj) ** 2))
            prior = e if prior is None else prior * e
        # positive weights: exp(5 v) v prior / sum_bag(exp(3 v) v prior).clamp(min=eps)
        v = s_flat.index_select(0, keys) * torch.exp(-5.0 * giou.detach())
        vp = v * prior
        den = torch.zeros(Gc, device=v.device).index_add_(0, gj, torch.exp(3 * v) * vp)
        w = torch.exp(5 * v) * vp / den.clamp(min=EPS).index_select(0, gj)
        # negative weights: y normalised on each GT's bag, 1 where IoU < 0.5
        t = (4.0 / 3.0) * (1 - iou * iou)
        tmin = torch.full((Gc,), math.inf, device=t.device)
        tmin = tmin.scatter_reduce_(0, gj, t, reduce="amin").index_select(0, gj)
        tmax = torch.full((Gc,), -math.inf, device=t.device)
        tmax = tmax.scatter_reduce_(0, gj, t, reduce="amax").index_select(0, gj)
        yv = (t - tmin + EPS) / (tmax.clamp(max=1.0) - tmin + EPS)
        yv = torch.where(iou < 0.5, torch.ones_like(yv), yv)
        neg_flat.scatter_reduce_(0, keys, yv, reduce="amin")
    return _ChunkPairs(pi, gj, keys, w, giou if keep_giou else None)


def _pair_loc_term(boxes: Tensor, pi: Tensor, gb: Tensor, gj: Tensor, w: Tensor) -> Tensor:
    """sum_k w_k 5 GIoU_loss(boxes[pi_k], gb[gj_k]) over the bag pairs of a chunk."""
    bt, gbt = boxes.t(), gb.t()
    _, giou = _iou_giou([bt[c].index_select(0, pi) for c in range(4)],
                        [gbt[c].index_select(0, gj) for c in range(4)])
    return (w * (5.0 * giou)).sum()


class _NegativeTerm(torch.autograd.Function):
    """``sum P_neg s^2 BCE(s, 0)`` with ``BCE(s, 0) = -log(clamp(1 - s, min=eps))``, fused: the
    forward keeps ``s``, ``P_neg`` and the log term; the backward is one expression,
    ``d/ds = P_neg (2 s L + s^2 / (1 - s))`` (the last term 0 where the clamp is active, as
    ``clamp``'s gradient), instead of autograd's chain of (P, C) products. ``P_neg`` gets no
    gradient (it is detached by definition)."""

    @staticmethod
    def forward(ctx, s: Tensor, neg_w: Tensor) -> Tensor:
        log_term = torch.rsub(s, 1).clamp_(min=EPS).log_().neg_()  # -log(clamp(1 - s))
        ctx.save_for_backward(s, neg_w, log_term)
        return (neg_w * s).mul_(s).mul_(log_term).sum()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        s, neg_w, log_term = ctx.saved_tensors
        one_minus = torch.rsub(s, 1)
        # s / (1 - s) where 1 - s >= eps (clamp passes the gradient there), else 0
        ratio = torch.where(one_minus >= EPS, s / one_minus, torch.zeros_like(s))
        grad = ratio.add_(log_term, alpha=2.0).mul_(s).mul_(neg_w).mul_(grad_out)
        return grad, None


def _prepare(scores, pred_boxes, points, strides, gt_boxes, gt_labels, sigma, gt_chunk_size):
    s = scores.float()
    labels = gt_labels.to(device=s.device, dtype=torch.long)
    gtb = gt_boxes.float()
    G = gtb.shape[0]
    if gt_chunk_size is not None and gt_chunk_size < 1:
        raise ValueError(f"gt_chunk_size must be >= 1 or None, got {gt_chunk_size!r}")
    chunk = max(1, G if gt_chunk_size is None else min(G, int(gt_chunk_size)))
    if isinstance(sigma, Tensor):
        sig = sigma.to(device=s.device, dtype=torch.float32)
        if sig.dim() != 2 or sig.shape[1] != 2:
            raise ValueError(
                f"sigma must be a float or a (C, 2) tensor, got shape {tuple(sig.shape)}"
            )
        sig = sig[labels]  # (G, 2)
    else:
        sig = torch.full((G, 2), float(sigma), device=s.device)
    return s, pred_boxes.float(), points.float(), strides.float(), gtb, labels, sig, chunk


@torch.no_grad()
def dw_image_weights(
    scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    sigma: Union[float, Tensor] = 1.11,
    gt_chunk_size: Optional[int] = 256,
) -> DWImageWeights:
    """DW positive and negative weights of one image (SPEC 4), detached, in the sparse form of
    :class:`DWImageWeights` -- the computation :func:`dw_image_terms` runs, without the loss
    sums. Equal to the dense (P, G) functions of this module (:func:`dw_candidate_bag`,
    :func:`dw_center_prior`, :func:`dw_pairwise_iou_giou`, :func:`dw_positive_weights`,
    :func:`dw_negative_weights`) on the bag pairs; see the module docstring.

    Args: as :func:`dw_image_terms`.
    """
    s, boxes, pts, strd, gtb, labels, sig, chunk = _prepare(
        scores, pred_boxes, points, strides, gt_boxes, gt_labels, sigma, gt_chunk_size
    )
    P, C = s.shape
    s_flat, boxes_t, pts_t = s.reshape(-1), boxes.t(), _columns(pts)
    neg_flat = torch.ones(P * C, device=s.device, dtype=torch.float32)
    pis, gjs, ws = [], [], []
    for start in range(0, gtb.shape[0], chunk):
        sl = slice(start, start + chunk)
        cp = _chunk_pairs(s_flat, C, boxes_t, pts_t, strd, gtb[sl], labels[sl], sig[sl],
                          neg_flat, keep_giou=False)
        pis.append(cp.pi)
        gjs.append(cp.gj + start)
        ws.append(cp.w)
    if not ws:
        empty = torch.zeros(0, dtype=torch.long, device=s.device)
        return DWImageWeights(empty, empty, torch.zeros(0, device=s.device), neg_flat.view(P, C))
    return DWImageWeights(torch.cat(pis), torch.cat(gjs), torch.cat(ws), neg_flat.view(P, C))


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

    Computed on the (point, GT) pairs of the candidate bags (see the module docstring): one
    host synchronisation per image (per GT chunk), no (P, G) float matrices.

    Args:
        scores: (P, C) joint scores ``s = sigmoid(cls) * sigmoid(obj)`` (with grad).
        pred_boxes: (P, 4) decoded predicted boxes XYXY in pixels (with grad).
        points: (P, 2) point coordinates; strides: (P,) their strides.
        gt_boxes: (G, 4) XYXY; gt_labels: (G,) int64 in [0, C).
        sigma: centre-prior sigma (float or (C, 2)), default 1.11.
        gt_chunk_size: process at most this many GTs at a time (``None``: all at once);
            see the module docstring on memory.
    Returns:
        :class:`DWImageTerms`. With zero GTs (or only empty bags): ``pos_cls = pos_loc = 0``
        attached to the graph, ``P_neg = 1`` everywhere (``neg`` is the plain weighted negative
        loss), ``neg_norm = 0``.
    """
    s, boxes, pts, strd, gtb, labels, sig, chunk = _prepare(
        scores, pred_boxes, points, strides, gt_boxes, gt_labels, sigma, gt_chunk_size
    )
    P, C = s.shape
    G = gtb.shape[0]
    s_flat = s.detach().reshape(-1)
    pts_t = _columns(pts)
    grad = torch.is_grad_enabled() and boxes.requires_grad
    chunked = chunk < G
    neg_flat = torch.ones(P * C, device=s.device, dtype=torch.float32)
    keys, ws = [], []
    pos_loc = boxes.reshape(-1)[:0].sum()  # 0, attached to the graph
    for start in range(0, G, chunk):
        sl = slice(start, start + chunk)
        gb = gtb[sl]
        # one chunk (every ordinary image): the pairs' GIoU is computed once, with its graph
        # when training; several chunks: recomputed in backward under checkpoint
        recompute = grad and chunked
        cp = _chunk_pairs(s_flat, C, (boxes.detach() if recompute else boxes).t(), pts_t, strd,
                          gb, labels[sl], sig[sl], neg_flat, keep_giou=not recompute)
        keys.append(cp.keys)
        ws.append(cp.w)
        if recompute:
            pos_loc = pos_loc + checkpoint(_pair_loc_term, boxes, cp.pi, gb, cp.gj, cp.w,
                                           use_reentrant=False)
        else:
            pos_loc = pos_loc + (cp.w * (5.0 * cp.giou)).sum()
    if ws:
        key, w = (keys[0], ws[0]) if len(ws) == 1 else (torch.cat(keys), torch.cat(ws))
    else:
        key = torch.zeros(0, dtype=torch.long, device=s.device)
        w = torch.zeros(0, device=s.device)
    # sum_j w_pos[i, j] BCE(s[i, label_j], 1) over the bag pairs
    pos_cls = (w * -torch.log(s.reshape(-1).index_select(0, key).clamp(min=EPS))).sum()
    neg_w = neg_flat.view(P, C)
    neg = _NegativeTerm.apply(s, neg_w)
    neg_norm = (1 - neg_w).sum()
    num_gt = torch.full((), float(G), device=s.device)  # a fill kernel, no host->device copy
    return DWImageTerms(pos_cls, pos_loc, neg, neg_norm, num_gt, w.sum())


def dw_losses(
    terms: Sequence[DWImageTerms],
    num_gt: Optional[Tensor] = None,
    neg_norm: Optional[Tensor] = None,
    pos_loss_weight: float = 0.25,
    min_norm: float = 1.0,
) -> Dict[str, Tensor]:
    """Normalised DW losses over a batch (SPEC 4).

    ``loss_cls_pos = 0.25 sum pos_cls / max(min_norm, num_gt)``,
    ``loss_loc = 0.25 sum pos_loc / max(min_norm, num_gt)``,
    ``loss_cls_neg = sum neg / max(min_norm, neg_norm)``.

    Args:
        terms: one :class:`DWImageTerms` per image.
        num_gt, neg_norm: the normalisers. In distributed training pass the **mean over
            processes** of the per-process sums (the reference's ``reduce_mean``), so DDP's
            gradient averaging gives the global-batch loss. ``None``: the local sums.
        pos_loss_weight: the reference's 0.25.
        min_norm: lower clamp of the normalisers: 1 on one process. With ``W`` processes
            passing means, ``1 / W`` clamps the *global* sums at 1, so W processes give exactly
            the single-process loss of the combined batch (the reference clamps the mean at 1,
            which differs when the whole batch has fewer GTs, or less negative-weight deficit,
            than processes).
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
        min=min_norm
    )
    neg_norm = torch.as_tensor(neg_norm, dtype=torch.float32, device=terms[0].pos_cls.device).clamp(
        min=min_norm
    )
    pos_cls = torch.stack([t.pos_cls for t in terms]).sum()
    pos_loc = torch.stack([t.pos_loc for t in terms]).sum()
    neg = torch.stack([t.neg for t in terms]).sum()
    return {
        "loss_cls_pos": pos_loss_weight * pos_cls / num_gt,
        "loss_loc": pos_loss_weight * pos_loc / num_gt,
        "loss_cls_neg": neg / neg_norm,
    }
