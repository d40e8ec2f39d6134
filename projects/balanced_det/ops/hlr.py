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

from .boxes import box_iou_matrix

__all__ = ["lexsort", "local_rank", "hierarchical_rank", "iou_hlr_rank", "nms_cluster_local_rank"]


def lexsort(keys: Sequence[Tuple[torch.Tensor, bool]], n: int, device) -> torch.Tensor:
    """Permutation sorting by ``keys`` (most significant first; each ``(key, descending)``),
    ties broken by index. Built by stable sorts from the least significant key up."""
    perm = torch.arange(n, device=device)
    for key, descending in reversed(list(keys)):
        order = torch.sort(key[perm], descending=descending, stable=True).indices
        perm = perm[order]
    return perm


def _rank_in_sorted_groups(perm: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Given ``perm`` that lists the elements group by group (each group contiguous), return each
    element's position inside its group (0 = first), in the original element order."""
    n = perm.numel()
    pos = torch.arange(n, device=perm.device)
    g = groups[perm]
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
    different labels never interact. Tensor code: NMS plus an IoU matrix between the suppressed
    boxes and the leaders (at most N^2 / 4 entries).

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
    # keep is sorted by decreasing score: the first matching column is the best leader.
    # Only the suppressed boxes need a leader: IoU of those (S) with the leaders (L) only,
    # S x L <= N^2 / 4 (one more host sync for S, as NMS already has for L).
    is_leader = torch.zeros(n, dtype=torch.bool, device=device)
    is_leader[keep] = True
    others = torch.nonzero(~is_leader)[:, 0]
    iou = box_iou_matrix(boxes[others], boxes[keep])  # S x L
    match = iou >= iou_threshold
    if labels is not None:
        match &= labels[others][:, None] == labels[keep][None, :]
    has = torch.ones(n, dtype=torch.bool, device=device)
    if others.numel():
        # max over a bool row: whether any leader matches, and the first one (torch.max
        # returns the index of the first maximal value)
        has[others], first = match.max(dim=1)
    else:
        first = others
    leader = torch.arange(n, device=device)
    leader[others] = torch.where(has[others], keep[first], others)
    key = torch.where(is_leader | ~has, torch.full_like(scores, float("inf")), scores)
    return local_rank(key, leader), leader
