"""The DW weights in dense (P, G) form: every point against every GT, the formulas of
docs/methods/dw.md written out plainly. The tests compare the library's bag-pair computation
(``balanced_det.ops.dw.dw_image_terms`` / ``dw_image_weights``) with these; they share the
library's IoU / GIoU and inside-box kernels, so those are covered by the same comparisons.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from balanced_det.ops.dw import BOX_EPS, EPS, _inside_gt_major, _iou_giou

__all__ = [
    "dw_candidate_bag",
    "dw_center_prior",
    "dw_pairwise_iou_giou",
    "dw_positive_weights",
    "dw_negative_weights",
]


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
    (Gaussian with mean 0, fixed), 0 outside the candidate bag.

    Args:
        points: (P, 2); strides: (P,) stride of each point's level.
        gt_boxes: (G, 4) XYXY; gt_labels: (G,) int64 class ids.
        sigma: a float (every class and axis; default 1.11) or a (C, 2) tensor of per-class
            (sigma_x, sigma_y).
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
    """Positive weights, detached:
    ``v = p_cls p_loc``, ``w = exp(5 v) v prior / sum_points(exp(3 v) v prior).clamp(min=1e-12)``,
    0 outside the bag.

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
    """Negative weights ``P_neg``, detached.

    ``t(x) = (4/3)(1 - x^2)`` (passes (0.5, 1) and (1, 0)); per GT over its bag,
    ``y = (t(iou) - min t + eps) / (min(1, max t) - min t + eps)``, ``y = 1`` where
    ``iou < 0.5``; ``P_neg = ones(P, C)``, ``P_neg[i, label_j] = min_j y[i, j]`` over the GTs
    whose bag contains i.

    Args:
        ious: (P, G) IoU of each point's predicted box with each GT (no grad needed).
        bag: (P, G) bool; gt_labels: (G,) int64; num_classes: C.
        eps: normalisation epsilon (1e-12).
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
