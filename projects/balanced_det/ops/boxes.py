"""Box helpers without host synchronisation: aligned IoU and box-delta encoding."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["clamped_area", "aligned_iou", "box_iou_matrix", "box_iou_pairs", "encode_box_deltas"]


def clamped_area(x1: Tensor, y1: Tensor, x2: Tensor, y2: Tensor) -> Tensor:
    """``max(x2 - x1, 0) * max(y2 - y1, 0)`` of boxes given as coordinate tensors."""
    return (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)


def aligned_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]`` (both (P, 4) XYXY), float32; union clamped to ``eps``."""
    a, b = a.float(), b.float()
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a, area_b = clamped_area(*a.unbind(1)), clamped_area(*b.unbind(1))
    return inter / (area_a + area_b - inter).clamp(min=eps)


def _iou_of_columns(a, b) -> Tensor:
    """``inter / (area_a + area_b - inter)`` of broadcastable coordinate columns ``a``, ``b``
    (each ``(x1, y1, x2, y2)``), with the float operations of torchvision's ``box_iou``."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
    h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
    inter = w.mul_(h)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    return inter / (area_a + area_b - inter)


def box_iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every ``a[i]`` with every ``b[j]`` ((N, 4), (M, 4) XYXY -> (N, M)).

    ``inter / (area_a + area_b - inter)`` with the same float operations as torchvision's
    ``box_iou`` (bitwise equal results), but each intermediate an (N, M) plane built from
    coordinate columns instead of (N, M, 2) stacks: about 2x faster on the CPU.
    """
    return _iou_of_columns([c[:, None] for c in a.unbind(1)], b.unbind(1))


def box_iou_pairs(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]`` ((P, 4) each -> (P,)), bitwise equal to the entries of
    :func:`box_iou_matrix` (and torchvision's ``box_iou``); no clamping of the union."""
    return _iou_of_columns(a.unbind(1), b.unbind(1))


def encode_box_deltas(src: Tensor, target: Tensor, weights: Sequence[float]) -> Tensor:
    """detectron2's ``Box2BoxTransform.get_deltas`` (dx, dy, dw, dh) for (..., 4) boxes,
    without its on-device assertion (a host sync). ``src`` must have positive sizes."""
    sw = src[..., 2] - src[..., 0]
    sh = src[..., 3] - src[..., 1]
    sx = src[..., 0] + 0.5 * sw
    sy = src[..., 1] + 0.5 * sh
    tw = target[..., 2] - target[..., 0]
    th = target[..., 3] - target[..., 1]
    tx = target[..., 0] + 0.5 * tw
    ty = target[..., 1] + 0.5 * th
    wx, wy, ww, wh = weights
    return torch.stack(
        [wx * (tx - sx) / sw, wy * (ty - sy) / sh, ww * torch.log(tw / sw),
         wh * torch.log(th / sh)], dim=-1)
