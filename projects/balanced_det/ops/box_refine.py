"""Box refinement of the DW head (Li et al., CVPR 2022; SPEC 4, "Box refinement").

For one pyramid level with stride ``s`` and points at ``((j + 0.5) s, (i + 0.5) s)`` (column
j, row i), the coarse distances ``(l, t, r, b)`` (pixels) give absolute box maps
::

    x1 = x - l,   y1 = y - t,   x2 = x + r,   y2 = y + b      (pixels)

Each side map is re-sampled (bilinear, 0 outside the map) at the coarse edge plus a
predicted offset, in feature-cell units relative to the point's own cell, as (dy, dx):
::

    x1 at (o0,           o1 - l / s)      # near the left edge
    y1 at (o2 - t / s,   o3)              # near the top edge
    x2 at (o4,           o5 + r / s)      # near the right edge
    y2 at (o6 + b / s,   o7)              # near the bottom edge

and converted back to distances through ReLU:
``l' = relu(x - x1')``, ``t' = relu(y - y1')``, ``r' = relu(x2' - x)``, ``b' = relu(y2' - y)``.

This is the reference (strongwolf/DW ``DWHead.deform_sampling``): a 1x1 deformable
convolution with weight 1, one group and one offset group per channel (mmcv
``deform_conv2d(feat, offset, ones(4, 1, 1, 1), 1, 0, 1, 4, 4)``), applied to the absolute
box maps in pixels (values are not divided by the stride; only the sampling positions are
in cells). Here: ``torchvision.ops.deform_conv2d`` with ``weight = ones(4, 1, 1, 1)`` — the
group count is inferred from the weight shape (4 input channels / 1 = 4 groups, depthwise)
and the offset-group count from the offset shape (8 / (2 * 1 * 1) = 4), offsets per group in
(dy, dx) order. Gradients reach both the distances (through the sampled values and the
sampling positions) and the offsets.

:func:`refine_ltrb_reference` computes the same with ``grid_sample`` (``align_corners=True``,
zero padding: pixel k of the map sits at normalised ``2k / (W - 1) - 1``; deform_conv2d also
samples at integer cell indices plus the offset, with zeros outside), for tests.

Maths in float32 (float64 inputs stay float64, for gradcheck).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import deform_conv2d

__all__ = ["refine_ltrb", "refine_ltrb_reference", "ltrb_box_maps", "refine_sampling_offsets"]


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
    """Refined distances (SPEC 4 box refinement) with ``torchvision.ops.deform_conv2d``.

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


def refine_ltrb_reference(
    ltrb: Tensor, offsets: Tensor, stride: float, offset: float = 0.5
) -> Tensor:
    """:func:`refine_ltrb` computed per side with ``F.grid_sample`` (bilinear, zero padding,
    ``align_corners=True``), for tests. Needs H, W >= 2 (``align_corners=True`` cannot
    address a size-1 axis)."""
    dt = _compute_dtype(ltrb)
    ltrb = ltrb.to(dt)
    offsets = offsets.to(dt)
    n, _, h, w = ltrb.shape
    if h < 2 or w < 2:
        raise ValueError(f"refine_ltrb_reference needs H, W >= 2, got {(h, w)}")
    boxes = ltrb_box_maps(ltrb, stride, offset)
    samp = refine_sampling_offsets(ltrb, offsets, stride)
    rows = torch.arange(h, device=ltrb.device, dtype=dt)[None, :, None]
    cols = torch.arange(w, device=ltrb.device, dtype=dt)[None, None, :]
    out = []
    for k in range(4):  # the four sides
        py = rows + samp[:, 2 * k]
        px = cols + samp[:, 2 * k + 1]
        grid = torch.stack(
            [2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1
        )  # (N, H, W, 2) as (x, y)
        out.append(
            F.grid_sample(
                boxes[:, k : k + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=True
            )[:, 0]
        )
    return _boxes_to_ltrb(torch.stack(out, dim=1), stride, offset)
