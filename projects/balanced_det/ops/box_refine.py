"""Box refinement of the DW head (Li et al., CVPR 2022): each side of the coarse box is
re-sampled near its edge at a predicted offset.

For one level with stride ``s``, points at ``((j + 0.5) s, (i + 0.5) s)`` and coarse distances
``(l, t, r, b)`` in pixels, the absolute box maps ``x1 = x - l, y1 = y - t, x2 = x + r,
y2 = y + b`` are sampled bilinearly (0 outside the map) at the point's own cell plus, in cells
and as (dy, dx)::

    x1 at (o0, o1 - l/s),   y1 at (o2 - t/s, o3),   x2 at (o4, o5 + r/s),   y2 at (o6 + b/s, o7)

and turned back into distances through ReLU. The sampling is a 1x1 deformable convolution with
weight 1, one group per side (``torchvision.ops.deform_conv2d``). See docs/methods/dw.md.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import deform_conv2d

__all__ = ["refine_ltrb", "ltrb_box_maps", "refine_sampling_offsets"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _point_maps(
    h: int, w: int, stride: float, offset: float, device, dtype
) -> Tuple[Tensor, Tensor]:
    ys = (torch.arange(h, device=device, dtype=dtype) + offset) * stride
    xs = (torch.arange(w, device=device, dtype=dtype) + offset) * stride
    return xs[None, None, None, :], ys[None, None, :, None]  # (1,1,1,W), (1,1,H,1)


def ltrb_box_maps(ltrb: Tensor, stride: float, offset: float = 0.5) -> Tensor:
    """Absolute box maps (N, 4, H, W) ``(x - l, y - t, x + r, y + b)`` in pixels from distances
    (N, 4, H, W), points at ``((j + offset) s, (i + offset) s)``."""
    n, c, h, w = ltrb.shape
    if c != 4:
        raise ValueError(f"ltrb must have 4 channels (l, t, r, b), got shape {tuple(ltrb.shape)}")
    x, y = _point_maps(h, w, float(stride), offset, ltrb.device, ltrb.dtype)
    l, t, r, b = ltrb.unbind(dim=1)
    return torch.stack([x[:, 0] - l, y[:, 0] - t, x[:, 0] + r, y[:, 0] + b], dim=1)


def refine_sampling_offsets(ltrb: Tensor, offsets: Tensor, stride: float) -> Tensor:
    """Sampling offsets (N, 8, H, W), (dy, dx) per side, in cells:
    ``(o0, o1 - l/s, o2 - t/s, o3, o4, o5 + r/s, o6 + b/s, o7)``."""
    if (
        offsets.shape[1] != 8
        or offsets.shape[0] != ltrb.shape[0]
        or offsets.shape[2:] != ltrb.shape[2:]
    ):
        raise ValueError(
            f"offsets must be (N, 8, H, W) matching ltrb {tuple(ltrb.shape)}, "
            f"got {tuple(offsets.shape)}"
        )
    d = ltrb / float(stride)
    o = offsets
    return torch.stack(
        [
            o[:, 0],
            o[:, 1] - d[:, 0],
            o[:, 2] - d[:, 1],
            o[:, 3],
            o[:, 4],
            o[:, 5] + d[:, 2],
            o[:, 6] + d[:, 3],
            o[:, 7],
        ],
        dim=1,
    )


def _boxes_to_ltrb(boxes: Tensor, stride: float, offset: float) -> Tensor:
    n, _, h, w = boxes.shape
    x, y = _point_maps(h, w, float(stride), offset, boxes.device, boxes.dtype)
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    return F.relu(torch.stack([x[:, 0] - x1, y[:, 0] - y1, x2 - x[:, 0], y2 - y[:, 0]], dim=1))


def refine_ltrb(ltrb: Tensor, offsets: Tensor, stride: float, offset: float = 0.5) -> Tensor:
    """Refined distances ``relu`` of the re-sampled box sides (module docstring), with
    ``torchvision.ops.deform_conv2d(boxes, offsets, ones(4, 1, 1, 1))``.

    Args:
        ltrb: (N, 4, H, W) coarse distances (l, t, r, b) in pixels, e.g.
            ``relu(scale * reg) * stride``.
        offsets: (N, 8, H, W) predicted (dy, dx) per side (x1, y1, x2, y2) in feature cells.
        stride: the level's stride ``s`` (pixels per cell).
        offset: position of a point inside its cell (0.5 = centre, as the reference).
    Returns:
        (N, 4, H, W) refined distances ``relu(...)`` in pixels, float32 (float64 kept);
        differentiable w.r.t. ``ltrb`` and ``offsets``.
    """
    dt = _compute_dtype(ltrb)
    ltrb = ltrb.to(dt)
    offsets = offsets.to(dt)
    boxes = ltrb_box_maps(ltrb, stride, offset)
    samp = refine_sampling_offsets(ltrb, offsets, stride)
    weight = torch.ones(4, 1, 1, 1, device=ltrb.device, dtype=dt)
    with torch.autocast(device_type=ltrb.device.type, enabled=False):
        sampled = deform_conv2d(boxes.contiguous(), samp.contiguous(), weight)
    return _boxes_to_ltrb(sampled, stride, offset)
