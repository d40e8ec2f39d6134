"""Hierarchical local ranks of PISA (Cao et al., "Prime Sample Attention in Object Detection",
CVPR 2020): IoU-HLR for positives, Score-HLR for negatives.

Ranks come from stable sorts, never a loop over groups: a lexicographic order is built by
successive stable sorts from the least to the most significant key, and the rank inside a group
is the position in that order minus the group's start. Ties go to the lower index.
See docs/methods/pisa.md.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torchvision.ops import batched_nms, nms

from .boxes import box_iou_pairs

__all__ = ["lexsort", "local_rank", "hierarchical_rank", "iou_hlr_rank", "first_overlapping",
           "nms_cluster_local_rank"]


def lexsort(keys: Sequence[Tuple[torch.Tensor, bool]], n: int, device) -> torch.Tensor:
    """Permutation sorting by ``keys`` (most significant first; each ``(key, descending)``),
    ties broken by index. Built by stable sorts from the least significant key up."""
    perm = torch.arange(n, device=device)
    for key, descending in reversed(list(keys)):
        order = torch.sort(key.index_select(0, perm), descending=descending, stable=True).indices
        perm = perm.index_select(0, order)
    return perm


def _rank_in_sorted_groups(perm: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Given ``perm`` that lists the elements group by group (each group contiguous), return each
    element's position inside its group (0 = first), in the original element order."""
    n = perm.numel()
    pos = torch.arange(n, device=perm.device)
    g = groups.index_select(0, perm)
    is_start = torch.ones(n, dtype=torch.bool, device=perm.device)
    is_start[1:] = g[1:] != g[:-1]
    start = torch.where(is_start, pos, torch.zeros_like(pos)).cummax(0).values
    rank = torch.empty_like(pos)
    rank[perm] = pos - start
    return rank


def local_rank(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Rank of each element inside its group by ``values`` descending (0 = largest).

    ``rank_i = #{j in group(i): v_j > v_i or (v_j == v_i and j < i)}`` — ties are broken by
    index (stable). ``group_ids`` are arbitrary integers. Computed by sorting on
    (group ascending, value descending); no host sync.

    Returns:
        long tensor (N,); empty for empty input.
    """
    n = values.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    perm = lexsort([(group_ids, False), (values.float(), True)], n, values.device)
    return _rank_in_sorted_groups(perm, group_ids)


def hierarchical_rank(
    local_ranks: torch.Tensor, values: torch.Tensor, class_ids: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Hierarchical local rank: inside each class, order the elements by (local rank
    ascending, value descending, index ascending) and return the position r_i in that order
    (0 = best): all local top-1s first sorted by value, then all top-2s, ...

    ``class_ids=None`` puts every element in one group (Score-HLR of the negatives).

    Args:
        local_ranks: (N,) int64; values: (N,) IoUs or scores; class_ids: (N,) or ``None``.
    Returns:
        long tensor (N,).
    """
    n = values.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    if class_ids is None:
        class_ids = torch.zeros(n, dtype=torch.long, device=values.device)
    perm = lexsort(
        [(class_ids, False), (local_ranks, False), (values.float(), True)], n, values.device
    )
    return _rank_in_sorted_groups(perm, class_ids)


def iou_hlr_rank(ious: torch.Tensor, gt_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """IoU-HLR of positives.

    1. IoU-LR: rank by IoU descending inside each GT group (``gt_ids`` unique over the batch,
       :func:`balanced_det.ops.isr.unique_gt_ids_from_pairs`).
    2. IoU-HLR: inside each class (``labels``), order by (IoU-LR ascending, IoU descending).

    Args:
        ious, gt_ids, labels: (P,) each.
    Returns:
        long tensor (P,) of ranks r_i (0 = most important). Per class the ranks are
        0..n_c - 1, so ``ranks.max() + 1`` is the largest per-class positive count ``n_max``.
    """
    lr = local_rank(ious, gt_ids)
    return hierarchical_rank(lr, ious, labels)


def _below(threshold: float) -> float:
    """Largest float32 strictly below ``threshold``: torchvision's NMS suppresses IoU > t, so
    passing this value suppresses IoU >= threshold for float32 IoUs (CPU and CUDA kernels)."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def first_overlapping(
    boxes: torch.Tensor,
    candidates: torch.Tensor,
    iou_threshold: float,
    labels: Optional[torch.Tensor] = None,
    candidate_labels: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """For each box, the index of the first candidate (lowest index) with IoU >= t and the
    same label (when labels are given); ``len(candidates)`` where there is none.

    Only the pairs that can reach IoU t are formed: IoU >= t needs an x-overlap
    ``iw >= t * max(w_a, w_b)`` and ``iw <= (w_a + w_b) / 2 - |cx_a - cx_b|``, so
    ``|cx_a - cx_b| <= w_a (1 - t) + max(0, 1/2 - t) * max_w`` (``w_a / 2`` at t = 0.5); the
    candidates, sorted by centre x, give each box a window by binary search. IoUs are
    :func:`box_iou_pairs` (bitwise those of the full matrix). One host sync (the pair count).

    Args:
        boxes: (S, 4) XYXY; candidates: (L, 4) XYXY; labels: (S,) and candidate_labels: (L,),
        or both ``None``.
    Returns:
        long tensor (S,).
    """
    n, m = boxes.shape[0], candidates.shape[0]
    device = boxes.device
    first = torch.full((n,), m, dtype=torch.long, device=device)
    if n == 0 or m == 0:
        return first
    t = float(iou_threshold)
    cx = (candidates[:, 0] + candidates[:, 2]) * 0.5
    cx_sorted, order = torch.sort(cx)
    width = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    max_width = (candidates[:, 2] - candidates[:, 0]).clamp(min=0).max()
    half = width * (1.0 - t) + max(0.0, 0.5 - t) * max_width
    half = half * (1.0 + 1e-3) + 1e-3  # a margin for the float rounding of the IoUs
    centre = (boxes[:, 0] + boxes[:, 2]) * 0.5
    lo = torch.searchsorted(cx_sorted, centre - half, side="left")
    hi = torch.searchsorted(cx_sorted, centre + half, side="right")
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        return first
    row = torch.repeat_interleave(torch.arange(n, device=device), counts, output_size=total)
    start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts, output_size=total)
    offset = torch.arange(total, device=device) - start
    col = order.index_select(0, lo.index_select(0, row) + offset)
    match = box_iou_pairs(boxes.index_select(0, row), candidates.index_select(0, col)) >= t
    if labels is not None:
        match &= labels.index_select(0, row) == candidate_labels.index_select(0, col)
    return first.scatter_reduce_(0, row, torch.where(match, col, m), reduce="amin")


def nms_cluster_local_rank(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    iou_threshold: float = 0.5,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Greedy NMS clustering and the local rank inside each cluster.

    Leaders are the boxes kept by greedy NMS in score order, suppressing at IoU >= t. Each
    other box joins the highest-scoring leader it overlaps with IoU >= t (the leader that
    suppressed it). The local rank is the position inside the cluster by score descending, the
    leader 0, ties by index. ``labels=None`` clusters class-agnostically; with labels, boxes of
    different labels never interact. Tensor code: NMS plus the IoUs of the suppressed boxes
    with the leaders near them (:func:`first_overlapping`).

    Args:
        boxes: (N, 4) XYXY; scores: (N,); labels: (N,) or ``None``; iou_threshold: t (0.5).
    Returns:
        (local_ranks (N,) long, leader (N,) long: index of the box leading its cluster).
    """
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone()
    boxes = boxes.float()
    scores = scores.float()
    thr = _below(iou_threshold)
    if labels is None:
        keep = nms(boxes, scores, thr)
    else:
        keep = batched_nms(boxes, scores, labels, thr)
    # keep is sorted by decreasing score: the first matching leader is the best one. Only the
    # suppressed boxes need a leader (one more host sync, as NMS already has).
    is_leader = torch.zeros(n, dtype=torch.bool, device=device)
    is_leader[keep] = True
    others = torch.nonzero(~is_leader)[:, 0]
    first = first_overlapping(boxes.index_select(0, others), boxes.index_select(0, keep),
                              iou_threshold,
                              None if labels is None else labels.index_select(0, others),
                              None if labels is None else labels.index_select(0, keep))
    has = torch.ones(n, dtype=torch.bool, device=device)
    has[others] = first < keep.numel()
    leader = torch.arange(n, device=device)
    leader[others] = torch.where(has[others], keep[first.clamp(max=max(keep.numel() - 1, 0))],
                                 others)
    key = torch.where(is_leader | ~has, torch.full_like(scores, float("inf")), scores)
    return local_rank(key, leader), leader
