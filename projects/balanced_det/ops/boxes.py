"""Box helpers without host synchronisation: aligned IoU and box-delta encoding."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["aligned_iou", "encode_box_deltas"]


def aligned_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]`` (both (P, 4) XYXY), float32; union clamped to ``eps``."""
    a, b = a.float(), b.float()
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    return inter / (area_a + area_b - inter).clamp(min=eps)


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
