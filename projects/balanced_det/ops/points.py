"""Point grids and FCOS-style point-to-box assignment. See docs/methods/fcos.md."""
from __future__ import annotations

import math
from typing import List, NamedTuple, Sequence, Tuple

import torch

__all__ = ["grid_points", "PointGrid", "point_grid", "grid_inside_pairs", "point_box_ltrb",
           "fcos_assign", "fcos_scale_ranges", "centerness_target"]


def grid_points(
    sizes: Sequence[Tuple[int, int]], strides: Sequence[int], offset: float = 0.5,
    device=None, dtype=torch.float32,
) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """Centres of every feature-map cell of every level, in input-image pixels.

    Point (x, y) of a level with stride s sits at ``((x + offset) s, (y + offset) s)``.

    Returns:
        points (R, 2) in (x, y), level-major then row-major (matches ``permute(0, 2, 3, 1)``
        flattening of NCHW maps); stride of each point (R,); number of points per level.
    """
    pts, strd, counts = [], [], []
    for (h, w), s in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + offset) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + offset) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pts.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
        strd.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
        counts.append(h * w)
    return torch.cat(pts), torch.cat(strd), counts


class PointGrid(NamedTuple):
    """The layout of the points :func:`grid_points` makes: ``levels`` (L, 4) float64 rows
    ``(stride, width, height, index of the level's first point)`` on the points' device, the
    cell ``offset`` and the number of points, with the per-level constants
    :func:`grid_inside_pairs` uses, derived from ``levels`` once. Build it with
    :func:`point_grid` (the derived fields must match ``levels``)."""

    levels: torch.Tensor
    offset: float
    num_points: int
    inv_stride: torch.Tensor  # (L,) float64 1 / stride
    stride: torch.Tensor  # (L, 1) float32 stride
    last_cell: torch.Tensor  # (4, 1, L) float64 width, height, width, height (+ 1)
    size: torch.Tensor  # (2, 1, L) int64 width, height
    first: torch.Tensor  # (L,) int64 index of the level's first point


def point_grid(sizes: Sequence[Tuple[int, int]], strides: Sequence[int], offset: float = 0.5,
               device=None) -> PointGrid:
    """:class:`PointGrid` of ``grid_points(sizes, strides, offset)`` (same arguments). One small
    host-to-device copy (pinned and asynchronous on CUDA)."""
    if len(sizes) != len(strides):
        raise ValueError(f"point_grid: {len(sizes)} level sizes but {len(strides)} strides")
    rows, first = [], 0
    for (h, w), s in zip(sizes, strides):
        rows.append((float(s), float(w), float(h), float(first)))
        first += int(h) * int(w)
    levels = torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)
    device = torch.device(device) if device is not None else levels.device
    if device.type == "cuda":
        levels = levels.pin_memory().to(device, non_blocking=True)
    else:
        levels = levels.to(device)
    wh = levels[:, 1:3].t()[:, None, :]  # (2, 1, L)
    return PointGrid(levels, float(offset), first, 1.0 / levels[:, 0],
                     levels[:, :1].float(), torch.cat([wh, wh]) + 1, wh.long(),
                     levels[:, 3].long())


def grid_inside_pairs(grid: PointGrid, boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every (box j, point i) with the point strictly inside the box (``x1 < x < x2``,
    ``y1 < y < y2``), for points laid out by ``grid``, without a (G, P) test.

    On each level the points inside a box form a rectangle of cells: its first column is the
    smallest ``i`` with ``p(i) = (i + offset) s > x1``, its end the smallest with ``p(i) >= x2``
    (rows likewise). Each bound is estimated in float64 and settled by comparing the float32
    points ``p`` of the three candidates around it (computed as :func:`grid_points` computes
    them), so the pairs are exactly those of the float32 test ``min(x - x1, x2 - x, y - y1,
    y2 - y) > 0`` (infinite edges included; a box with a NaN coordinate contains no point).
    The rectangles are expanded in two steps, into rows of cells and the rows into points, so
    each pair costs a few element-wise operations. One host synchronisation (the row and pair
    counts). The points are float32, as ``grid_points`` makes them by default.

    Args:
        grid: :class:`PointGrid` of the points; boxes: (G, 4) XYXY.
    Returns:
        ``(box_index, point_index)``, each (K,) int64, box-major then point-ascending (the
        order of ``inside_mask(G, P).nonzero()``).
    """
    L, device = grid.levels.shape[0], boxes.device
    bt = boxes.float().t()  # (4, G): x1, y1, x2, y2
    inf = math.inf
    # the bound of every edge is the number of cells before it: p <= x1 for the lower edges,
    # p < x2 for the upper ones. A NaN edge becomes +inf (lower) or -inf (upper): an empty
    # range, as the mask test gives
    edges = torch.cat([bt[:2].nan_to_num(inf, inf, -inf), bt[2:].nan_to_num(-inf, inf, -inf)])
    # candidates i0, i0 + 1, i0 + 2 around (edge / s - offset); the bound is i0 plus the number
    # of them before the edge; i0 inside [-3, size + 1], so infinite or huge edges give bounds
    # 0 / size, not int64 overflow
    i0 = torch.floor(edges.double()[:, :, None] * grid.inv_stride - (grid.offset + 1))
    i0 = torch.minimum(i0.clamp_(min=-3.0), grid.last_cell)  # (4, G, L)
    cand = i0[..., None] + torch.arange(3, device=device, dtype=torch.float64)
    p = (cand.float() + grid.offset) * grid.stride  # float32, as grid_points
    e = edges[:, :, None, None]
    before = torch.cat([p[:2] <= e[:2], p[2:] < e[2:]])
    bound = before.sum(-1).add_(i0.long())  # (4 x1/y1/x2/y2, G, L)
    lo = bound[:2].clamp(min=0)
    n = (torch.minimum(bound[2:], grid.size) - lo).clamp_(min=0)
    cols, rows = n[0].reshape(-1), n[1].reshape(-1)  # per (box, level) block, box-major
    width = grid.size[0, 0]
    corner = (lo[1] * width + lo[0] + grid.first).reshape(-1)  # the block's first point
    num_rows, k = torch.stack([rows, rows * cols]).sum(1).tolist()  # the host sync
    # step 1: one unit per row of cells of every block, starting at corner + row * width
    row_block = torch.repeat_interleave(rows, output_size=num_rows)
    row_in_block = torch.arange(num_rows, device=device).sub_(
        (rows.cumsum(0) - rows).index_select(0, row_block))
    row_len = cols.index_select(0, row_block)
    row_start = corner.index_select(0, row_block).add_(
        row_in_block.mul_(width.repeat(boxes.shape[0]).index_select(0, row_block)))
    # step 2: the cells of a row are consecutive points
    pair_row = torch.repeat_interleave(row_len, output_size=k)
    shift = row_start.sub_(row_len.cumsum(0) - row_len)
    point = torch.arange(k, device=device).add_(shift.index_select(0, pair_row))
    box = torch.div(row_block, L, rounding_mode="floor").index_select(0, pair_row)
    return box, point


def point_box_ltrb(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Distances (R, G, 4) ``(x - x1, y - y1, x2 - x, y2 - y)`` from each point (R, 2) to the
    left, top, right, bottom sides of each box (G, 4) XYXY."""
    x, y = points[:, 0, None], points[:, 1, None]
    return torch.stack(
        [x - boxes[None, :, 0], y - boxes[None, :, 1], boxes[None, :, 2] - x, boxes[None, :, 3] - y],
        dim=2,
    )


def fcos_scale_ranges(strides: torch.Tensor, counts: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """FCOS regression ranges per point: ``(4 s, 8 s)``, open below on the first level and
    above on the last (P3-P7: 0-64, 64-128, 128-256, 256-512, 512-inf).

    Args:
        strides: (R,) stride of each point; counts: points per level.
    Returns:
        ``(lower, upper)``, each (R,).
    """
    lower = strides * 4
    upper = strides * 8
    lower[: counts[0]] = 0
    upper[-counts[-1]:] = float("inf")
    return lower, upper


def fcos_assign(
    points: torch.Tensor,
    strides: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    gt_boxes: torch.Tensor,
    center_sampling_radius: float = 1.5,
) -> torch.Tensor:
    """FCOS assignment (as detectron2's FCOS): a point is positive for a box if it lies inside
    the box, within ``radius * stride`` of its centre (Chebyshev distance), and the largest of
    its four distances is inside the level's range ``(lower, upper)``; among several boxes the
    smallest area wins.

    Args:
        points: (R, 2); strides, lower, upper: (R,); gt_boxes: (G, 4) XYXY.
    Returns:
        (R,) int64 matched box index, ``-1`` for background (all -1 with zero boxes).
    """
    R = points.shape[0]
    if gt_boxes.shape[0] == 0:
        return torch.full((R,), -1, dtype=torch.long, device=points.device)
    ltrb = point_box_ltrb(points, gt_boxes)  # R x G x 4
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    near = (points[:, None, :] - centres[None]).abs().amax(dim=2) < (
        center_sampling_radius * strides[:, None]
    )
    inside = ltrb.amin(dim=2) > 0
    reach = ltrb.amax(dim=2)
    in_range = (reach > lower[:, None]) & (reach < upper[:, None])
    match = near & inside & in_range
    area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    cost = torch.where(match, area[None, :].expand_as(match), torch.full_like(reach, float("inf")))
    min_cost, idx = cost.min(dim=1)
    return torch.where(torch.isfinite(min_cost), idx, torch.full_like(idx, -1))


def centerness_target(ltrb: torch.Tensor) -> torch.Tensor:
    """FCOS centerness ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` for (..., 4)."""
    lr, tb = ltrb[..., [0, 2]], ltrb[..., [1, 3]]
    ratio = (lr.amin(-1) / lr.amax(-1).clamp(min=1e-6)) * (tb.amin(-1) / tb.amax(-1).clamp(min=1e-6))
    return ratio.clamp(min=0).sqrt()
