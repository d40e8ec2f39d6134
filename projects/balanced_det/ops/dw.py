"""Dual Weighting (Li et al., "A Dual Weighting Label Assignment Scheme for Object Detection",
CVPR 2022): candidate bags, centre prior, positive and negative weights and the losses of an
FCOS-style DW head.

Per image, with points ``i`` (P), ground truths ``j`` (G), joint scores
``s = sigmoid(cls) * sigmoid(obj)`` (P, C) and decoded predicted boxes (P, 4)::

    bag[i, j]   = point i strictly inside box j (all levels, no scale ranges)
    prior[i, j] = prod_{x,y} exp(-((p_i - c_j) / stride_i)^2 / (2 sigma^2)) on the bag, else 0
    p_cls       = s[i, label_j],   p_loc = exp(-5 GIoU_loss(box_i, gt_j)),   v = p_cls p_loc
    w_pos       = exp(5 v) v prior / sum_i(exp(3 v) v prior).clamp(min=1e-12)      (detached)
    t(x)        = (4/3)(1 - x^2)
    y[i, j]     = (t(iou) - min_bag t + eps) / (min(1, max_bag t) - min_bag t + eps),
                  y = 1 where iou < 0.5
    P_neg       = ones(P, C); P_neg[i, label_j] = min over the bags containing i of y[i, j]
    L_pos_cls   = 0.25 sum w_pos BCE(p_cls, 1) / num_gt
    L_pos_loc   = 0.25 sum w_pos BCE(p_loc, 1) / num_gt      (BCE(p_loc, 1) = 5 GIoU_loss)
    L_neg       = sum P_neg s^2 BCE(s, 0) / max(1, sum (1 - P_neg))

Everything is computed on the K (point, GT) pairs of the bags only, never on (P, G) matrices,
and ``P_neg`` is kept on the (point, class) entries the pairs touch (it is 1 elsewhere), so
``L_neg = sum s^2 BCE(s, 0) + sum_touched (P_neg - 1) s^2 BCE(s, 0)``:
:func:`dw_image_terms` gives the un-normalised loss terms of one image, :func:`dw_losses` the
normalised batch losses, :func:`dw_image_weights` the weights alone. All maths in float32.
Derivations, memory, and the differences from the reference code: docs/methods/dw.md.
"""

from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..utils.checks import check_int
from .boxes import clamped_area
from .points import PointGrid, grid_inside_pairs

__all__ = [
    "DWImageWeights",
    "dw_image_weights",
    "DWImageTerms",
    "dw_image_terms",
    "dw_losses",
]

EPS = 1e-12  # negative-weight normalisation, w_pos denominator and BCE clamp
BOX_EPS = 1e-6  # union / enclosing-area floor of IoU and GIoU


class DWImageWeights(NamedTuple):
    """DW weights of one image in sparse form (detached, float32).

    The positive weights are nonzero only on the candidate bags, so they are given on the
    ``K`` (point, GT) pairs of the bags (every point strictly inside every box), ordered by GT
    then point; ``w_pos[point_idx[k], gt_idx[k]] = pos[k]`` and 0 elsewhere. ``P_neg`` is below
    1 only on (point, class) entries of the pairs; those are stored:
    ``P_neg.view(-1)[neg_idx[u]] = neg[u]`` (``neg_idx`` ascending), 1 elsewhere
    (:meth:`dense_neg`).
    """

    point_idx: Tensor  # (K,) int64
    gt_idx: Tensor  # (K,) int64
    pos: Tensor  # (K,) float32 w_pos of each bag pair
    neg_idx: Tensor  # (U,) int64 flat index point * C + class into the (P, C) scores
    neg: Tensor  # (U,) float32 P_neg < 1 on those entries
    shape: Tuple[int, int]  # (P, C)

    def dense_neg(self) -> Tensor:
        """``P_neg`` as a (P, C) tensor (ones with the touched entries written in)."""
        out = torch.ones(self.shape[0] * self.shape[1], device=self.neg.device,
                         dtype=self.neg.dtype)
        return out.index_copy_(0, self.neg_idx, self.neg).view(self.shape)


class DWImageTerms(NamedTuple):
    """Un-normalised DW loss sums of one image (scalars, float32)."""

    pos_cls: Tensor  # sum w_pos BCE(p_cls, 1)            (with grad)
    pos_loc: Tensor  # sum w_pos BCE(p_loc, 1)            (with grad)
    neg: Tensor  # sum P_neg s^2 BCE(s, 0)                (with grad)
    neg_norm: Tensor  # sum (1 - P_neg)                   (detached)
    num_gt: Tensor  # G                                   (detached)
    pos_weight: Optional[Tensor] = None  # sum w_pos, for logging (detached)


def _iou_giou(a, b, eps: float = BOX_EPS,
              area_b: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """IoU and GIoU loss, element by element, of boxes given coordinate-major: ``a`` and ``b``
    unpack into ``x1, y1, x2, y2`` tensors (mutually broadcastable):
    ``IoU = I / max(U, eps)``, ``GIoU_loss = 1 - IoU + (E - U) / max(E, eps)`` (E: area of the
    enclosing box). Coordinate rows keep the element-wise kernels contiguous. ``area_b``: the
    areas of ``b`` when already known (each GT's, gathered to its pairs)."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    area_a = clamped_area(ax1, ay1, ax2, ay2)
    if area_b is None:
        area_b = clamped_area(bx1, by1, bx2, by2)
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
    y: Tensor  # (K,) y, the pair's P_neg candidate (P_neg = min over the pairs of an entry)
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
    keep_giou: bool,
    grid: Optional[PointGrid] = None,
) -> _ChunkPairs:
    """DW weights of one GT chunk on its bag pairs.

    Args:
        s_flat: (P * C) detached scores; boxes_t: (4, P) predicted boxes coordinate-major (a
            transposed view); pts_t: ``(x, y)``, each (P,) contiguous; strd: (P,).
        gb, gl, sig: the chunk's GT boxes (Gc, 4), labels (Gc,) and prior sigmas (Gc, 2).
        keep_giou: return the pairs' GIoU loss, with its graph to ``boxes_t`` when grad mode is
            on (the weights use it detached).
        grid: the points' :class:`~balanced_det.ops.points.PointGrid`, or ``None``.
    """
    Gc = gb.shape[0]
    with torch.no_grad():
        # the bag pairs, GT-major then point-ascending; one host synchronisation (K is
        # data-dependent): the pair count of the grid's cell ranges, or nonzero of the mask
        if grid is not None:
            gj, pi = grid_inside_pairs(grid, gb)
        else:
            gj, pi = _inside_gt_major(pts_t[0], pts_t[1], gb).nonzero().unbind(1)
        keys = pi * C + gl.index_select(0, gj)
        gbt = gb.t()
        g = [gbt[c].index_select(0, gj) for c in range(4)]  # x1, y1, x2, y2 of each pair's GT
        area_g = clamped_area(*gbt).index_select(0, gj)
    with torch.set_grad_enabled(keep_giou and torch.is_grad_enabled()):
        iou, giou = _iou_giou([boxes_t[c].index_select(0, pi) for c in range(4)], g,
                              area_b=area_g)
    with torch.no_grad():
        iou = iou.detach()
        # centre prior: exp(-sum_{x,y} (p - c)^2 / (2 sigma^2) / stride^2), with the GT's
        # centre c and 2 sigma^2 gathered per pair
        st = strd.index_select(0, pi)
        centre = (gbt[:2] + gbt[2:]) / 2
        two_var = sig.t().square().mul_(2)  # (2, Gc) 2 sigma^2
        z = None
        for a in range(2):  # x, y
            d = pts_t[a].index_select(0, pi) - centre[a].index_select(0, gj)
            za = d.square_().div_(two_var[a].index_select(0, gj))
            z = za if z is None else z.add_(za)
        prior = z.div_(st.square_()).neg_().exp_()
        # positive weights: exp(5 v) v prior / sum_bag(exp(3 v) v prior).clamp(min=eps)
        v = s_flat.index_select(0, keys).mul_(torch.exp(-5.0 * giou.detach()))
        vp = v * prior
        den = torch.zeros(Gc, device=v.device).index_add_(0, gj, torch.exp(3 * v).mul_(vp))
        w = torch.exp(5 * v).mul_(vp).div_(den.clamp_(min=EPS).index_select(0, gj))
        # negative weights: y = (t - min_bag t + eps) / (min(1, max_bag t) - min_bag t + eps),
        # with min / max over each GT's bag, 1 where IoU < 0.5 (a one-pair bag: y = eps / eps = 1)
        t = iou.square().mul_(-4.0 / 3.0).add_(4.0 / 3.0)  # (4/3)(1 - iou^2)
        tmin = torch.full((Gc,), math.inf, device=t.device).scatter_reduce_(
            0, gj, t, reduce="amin")
        tmax = torch.full((Gc,), -math.inf, device=t.device).scatter_reduce_(
            0, gj, t, reduce="amax")
        span = tmax.clamp_(max=1.0).sub_(tmin).add_(EPS)
        yv = (t - tmin.index_select(0, gj)).add_(EPS).div_(span.index_select(0, gj))
        yv = torch.where(iou < 0.5, 1.0, yv)
    return _ChunkPairs(pi, gj, keys, w, yv, giou if keep_giou else None)


def _touched_negatives(keys: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """``P_neg`` on the (point, class) entries of the pairs, one value per pair in key order:
    ``order`` sorts the pairs by ``keys``; ``neg[k]`` belongs to pair ``order[k]`` and is, at
    the first pair of each entry, the minimum ``y`` of the pairs on it (a point inside several
    boxes of one class), 1 at the entry's other pairs — so ``sum (P_neg - 1) f`` over the
    result is the sum over the distinct entries. No host synchronisation (no ``unique``)."""
    sk, order = keys.sort(stable=True)  # pairs already sorted within each GT: faster stable
    ys = y.index_select(0, order)
    first = torch.ones_like(sk, dtype=torch.bool)
    first[1:] = sk[1:] != sk[:-1]
    run = first.cumsum(0) - 1  # entry number of each sorted pair
    run_min = torch.full_like(ys, math.inf).scatter_reduce_(0, run, ys, reduce="amin")
    return order, torch.where(first, run_min.index_select(0, run), torch.ones_like(ys))


def _pair_loc_term(boxes: Tensor, pi: Tensor, gb: Tensor, gj: Tensor, w: Tensor) -> Tensor:
    """sum_k w_k 5 GIoU_loss(boxes[pi_k], gb[gj_k]) over the bag pairs of a chunk."""
    bt, gbt = boxes.t(), gb.t()
    _, giou = _iou_giou([bt[c].index_select(0, pi) for c in range(4)],
                        [gbt[c].index_select(0, gj) for c in range(4)])
    return (w * (5.0 * giou)).sum()


def _negative_loss(s: Tensor) -> Tensor:
    """``s^2 BCE(s, 0)`` element by element, ``BCE(s, 0) = -log(clamp(1 - s, min=eps))``."""
    return s * s * -torch.log(torch.rsub(s, 1).clamp(min=EPS))


class _NegativeSum(torch.autograd.Function):
    """``sum s^2 BCE(s, 0)`` over all (P, C) scores (:func:`_negative_loss` summed), fused: the
    forward keeps ``s`` and the log term; the backward is one expression,
    ``d/ds = 2 s L + s^2 / (1 - s)`` (the last term 0 where the clamp is active, as
    ``clamp``'s gradient), instead of autograd's chain of (P, C) products."""

    @staticmethod
    def forward(ctx, s: Tensor) -> Tensor:
        log_term = torch.rsub(s, 1).clamp_(min=EPS).log_().neg_()  # -log(clamp(1 - s))
        ctx.save_for_backward(s, log_term)
        return (s * s).mul_(log_term).sum()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        s, log_term = ctx.saved_tensors
        one_minus = torch.rsub(s, 1)
        # s / (1 - s) where 1 - s >= eps (clamp passes the gradient there), else 0
        ratio = torch.where(one_minus >= EPS, s / one_minus, torch.zeros_like(s))
        return ratio.add_(log_term, alpha=2.0).mul_(s).mul_(grad_out)


def _prepare(scores, pred_boxes, points, strides, gt_boxes, gt_labels, sigma, gt_chunk_size):
    s = scores.float()
    labels = gt_labels.to(device=s.device, dtype=torch.long)
    gtb = gt_boxes.float()
    G = gtb.shape[0]
    if gt_chunk_size is not None:
        check_int("gt_chunk_size", gt_chunk_size, 1)
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


def _check_grid(grid: Optional[PointGrid], num_points: int) -> None:
    if grid is not None and grid.num_points != num_points:
        raise ValueError(f"grid describes {grid.num_points} points but the scores have "
                         f"{num_points} rows: pass the PointGrid of the same grid_points call")


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
    grid: Optional[PointGrid] = None,
) -> DWImageWeights:
    """DW positive and negative weights of one image (module docstring formulas), detached, as
    :class:`DWImageWeights`: the computation :func:`dw_image_terms` runs, without the loss sums.

    Args: as :func:`dw_image_terms` (``grid`` included).
    Returns:
        :class:`DWImageWeights` (K bag pairs; ``P_neg`` on the U entries below 1).
    """
    s, boxes, pts, strd, gtb, labels, sig, chunk = _prepare(
        scores, pred_boxes, points, strides, gt_boxes, gt_labels, sigma, gt_chunk_size
    )
    P, C = s.shape
    _check_grid(grid, P)
    s_flat, boxes_t, pts_t = s.reshape(-1), boxes.t(), _columns(pts)
    parts = []
    for start in range(0, gtb.shape[0], chunk):
        sl = slice(start, start + chunk)
        cp = _chunk_pairs(s_flat, C, boxes_t, pts_t, strd, gtb[sl], labels[sl], sig[sl],
                          keep_giou=False, grid=grid)
        parts.append((cp.pi, cp.gj + start, cp.w, cp.keys, cp.y))
    long, f32 = torch.long, torch.float32
    pi, gj, w, keys, y = _concat_fields(parts, (long, long, f32, long, f32), s.device)
    order, neg = _touched_negatives(keys, y)
    below = (neg < 1).nonzero().squeeze(1)  # the entries' count: one host synchronisation
    return DWImageWeights(pi, gj, w, keys.index_select(0, order.index_select(0, below)),
                          neg.index_select(0, below), (P, C))


def _concat_fields(parts, dtypes, device) -> Tuple[Tensor, ...]:
    """The GT chunks' per-pair tensors joined field by field; with no chunk, empty tensors of
    ``dtypes``."""
    if not parts:
        return tuple(torch.zeros(0, dtype=d, device=device) for d in dtypes)
    if len(parts) == 1:
        return tuple(parts[0])
    return tuple(torch.cat(field) for field in zip(*parts))


def dw_image_terms(
    scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    sigma: Union[float, Tensor] = 1.11,
    gt_chunk_size: Optional[int] = 256,
    grid: Optional[PointGrid] = None,
) -> DWImageTerms:
    """DW loss terms of one image, before normalisation (module docstring formulas).

    Computed on the K (point, GT) pairs of the candidate bags, without (P, G) float matrices;
    one host synchronisation (the pair count) per image, or per GT chunk.

    Args:
        scores: (P, C) joint scores ``s = sigmoid(cls) * sigmoid(obj)`` (with grad).
        pred_boxes: (P, 4) decoded predicted boxes XYXY in pixels (with grad).
        points: (P, 2) point coordinates; strides: (P,) their strides.
        gt_boxes: (G, 4) XYXY; gt_labels: (G,) int64 in [0, C).
        sigma: centre-prior sigma (float or (C, 2)), default 1.11.
        gt_chunk_size: process at most this many GTs at a time (``None``: all at once). With
            several chunks the localisation term is recomputed in backward (checkpoint).
        grid: when ``points`` are exactly ``grid_points(sizes, strides, offset)``, their
            :class:`~balanced_det.ops.points.PointGrid` (:func:`~balanced_det.ops.points.point_grid`
            of the same arguments): the bag pairs are then enumerated from each GT's cell
            ranges (:func:`~balanced_det.ops.points.grid_inside_pairs`, O(K)) instead of a (G, P)
            inside test; the same pairs in the same order, so the same results.
    Returns:
        :class:`DWImageTerms`. With zero GTs (or only empty bags): ``pos_cls = pos_loc = 0``
        attached to the graph, ``P_neg = 1`` everywhere (``neg`` is the plain weighted negative
        loss), ``neg_norm = 0``.
    """
    s, boxes, pts, strd, gtb, labels, sig, chunk = _prepare(
        scores, pred_boxes, points, strides, gt_boxes, gt_labels, sigma, gt_chunk_size
    )
    P, C = s.shape
    _check_grid(grid, P)
    G = gtb.shape[0]
    s_flat = s.detach().reshape(-1)
    pts_t = _columns(pts)
    grad = torch.is_grad_enabled() and boxes.requires_grad
    chunked = chunk < G
    parts = []
    pos_loc = boxes.reshape(-1)[:0].sum()  # 0, attached to the graph
    for start in range(0, G, chunk):
        sl = slice(start, start + chunk)
        gb = gtb[sl]
        # one chunk (every ordinary image): the pairs' GIoU is computed once, with its graph
        # when training; several chunks: recomputed in backward under checkpoint
        recompute = grad and chunked
        cp = _chunk_pairs(s_flat, C, (boxes.detach() if recompute else boxes).t(), pts_t, strd,
                          gb, labels[sl], sig[sl], keep_giou=not recompute, grid=grid)
        parts.append((cp.w, cp.keys, cp.y))
        if recompute:
            pos_loc = pos_loc + checkpoint(_pair_loc_term, boxes, cp.pi, gb, cp.gj, cp.w,
                                           use_reentrant=False)
        else:
            pos_loc = pos_loc + (cp.w * (5.0 * cp.giou)).sum()
    w, key, y = _concat_fields(parts, (torch.float32, torch.long, torch.float32), s.device)
    # sum_j w_pos[i, j] BCE(s[i, label_j], 1) over the bag pairs
    # (one gather of the pairs' scores from the (P, C) matrix: its backward is a (P, C) scatter)
    s_pairs = s.reshape(-1).index_select(0, key)
    pos_cls = (w * -torch.log(s_pairs.clamp(min=EPS))).sum()
    # sum P_neg s^2 BCE(s, 0): over every entry, plus (P_neg - 1) s^2 BCE(s, 0) on the touched
    # entries (P_neg = 1 on the others), so no (P, C) P_neg is formed
    with torch.no_grad():
        order, neg_w = _touched_negatives(key, y)
    touched = _negative_loss(s_pairs.index_select(0, order))
    neg = _NegativeSum.apply(s) + ((neg_w - 1) * touched).sum()
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
    """Normalised DW losses over a batch.

    ``loss_cls_pos = 0.25 sum pos_cls / max(min_norm, num_gt)``,
    ``loss_loc = 0.25 sum pos_loc / max(min_norm, num_gt)``,
    ``loss_cls_neg = sum neg / max(min_norm, neg_norm)``.

    Args:
        terms: one :class:`DWImageTerms` per image.
        num_gt, neg_norm: the normalisers; in distributed training the mean over processes of
            the per-process sums. ``None``: the local sums.
        pos_loss_weight: weight of the positive terms (0.25).
        min_norm: lower clamp of the normalisers: 1 on one process, ``1 / W`` with ``W``
            processes passing means (so the global sums are clamped at 1).
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
