"""Index selection of the sampling methods: random, instance-balanced positives and IoU-balanced
negatives (Libra R-CNN, SPEC 1.3-1.4), OHEM top-k (SPEC 1.2).

Every multi-stage rule ("take up to q per group, then fill uniformly from the rest") is turned
into one priority key per candidate — ``tier + uniform random`` — and a single ``topk``: higher
tiers are taken first, uniformly at random inside a tier, never twice. Ranks inside a group come
from :func:`balanced_det.ops.hlr.local_rank` over random keys; each stage draws fresh random keys
so that a later stage is uniform over what an earlier stage left. Candidate counts stay tensors.
Randomness comes from ``torch.rand`` with the optional ``generator`` (on the inputs' device).
"""
from __future__ import annotations

from typing import Optional

import torch
from torchvision.ops import batched_nms

from .hlr import local_rank

__all__ = ["random_choice", "instance_balanced_pos_sample", "iou_balanced_neg_sample", "ohem_topk"]


def _rand(n: int, generator: Optional[torch.Generator], device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device)


def random_choice(
    mask: torch.Tensor, num_expected: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Uniformly random subset of ``min(num_expected, mask.sum())`` of the True positions.

    Top-k over random keys with unavailable positions masked, then one final boolean selection
    (a host sync: the output size is data-dependent).

    Returns:
        long tensor of indices into ``mask``, no duplicates, in random order.
    """
    n = mask.numel()
    k = min(int(num_expected), n)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=mask.device)
    key = _rand(n, generator, mask.device)
    key = torch.where(mask, key, torch.full_like(key, -1.0))
    idx = key.topk(k).indices
    return idx[mask[idx]]


def instance_balanced_pos_sample(
    gt_ids: torch.Tensor, num_expected: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Instance-balanced positive sampling (Libra R-CNN, SPEC 1.4).

    Candidates are the P_c positives, ``gt_ids`` their matched GT. If P_c <= P (= num_expected)
    all are returned. Otherwise, with G the number of distinct GTs among the candidates:
      1. per GT at most ``cap = round(P / G) + 1`` candidates (round half to even, as Python's
         ``round`` in mmdet), chosen uniformly inside the GT;
      2. if that gives fewer than P, fill uniformly from the unselected candidates;
         if more, keep a uniform random subset of P of them.
    No duplicates (mmdet's set-of-tensors difference can duplicate indices; not here).
    Vectorised: random keys + group ranks; no host sync, the output size is static.

    Returns:
        long tensor (min(P, P_c),) of indices into the candidates.
    """
    n = gt_ids.numel()
    device = gt_ids.device
    k = min(int(num_expected), n)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    if n <= num_expected:
        return torch.arange(n, device=device)
    sorted_ids = gt_ids.sort().values
    num_gts = (sorted_ids[1:] != sorted_ids[:-1]).sum() + 1
    cap = torch.round(float(num_expected) / num_gts.float()) + 1
    rank = local_rank(_rand(n, generator, device), gt_ids)
    tier = (rank.float() < cap).float()
    key = tier + _rand(n, generator, device)
    return key.topk(k).indices


def iou_balanced_neg_sample(
    max_ious: torch.Tensor,
    num_expected: int,
    floor_thr: float = -1.0,
    floor_fraction: float = 0.0,
    num_bins: int = 3,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """IoU-balanced negative sampling (Libra R-CNN, SPEC 1.3).

    ``max_ious`` (N,) are the max IoUs with any GT of the N negative candidates. If
    N <= num_expected all are returned. Otherwise:

    * IoU-sampling set S: all negatives if ``floor_thr < 0`` (default -1: no floor);
      IoU > 0 if ``floor_thr == 0``; IoU >= floor_thr if ``floor_thr > 0``. The floor set F
      (IoU below the floor; IoU == 0 for floor_thr == 0) is the rest.
    * ``n_iou = int(num_expected * (1 - floor_fraction))``; if |S| > n_iou, split
      [lo, hi] into ``num_bins`` (K, default 3) equal bins, lo = max(floor_thr, 0) (IoUs are
      >= 0, so "no floor" starts at 0) and hi = the max IoU among S (the last bin is closed so
      that negative is included); draw ``int(n_iou / K)`` uniformly per bin; fill the shortfall
      up to n_iou uniformly from the rest of S.
    * the remainder of num_expected from F uniformly; any still missing from all the unselected
      negatives uniformly.

    Two mmdet behaviours are deliberately NOT reproduced: (1) mmdet rewrites ``floor_thr`` from
    -1 to 0 on its first call (state), after which IoU = 0 negatives only serve as filler;
    here arguments never change. (2) mmdet splits [floor, max IoU over all proposals incl. the
    appended GTs = 1.0], so the top bin of the negatives (IoU < 0.5) is always empty; here hi
    is the max IoU among the negatives.

    Vectorised (group ranks by bin over random keys, one top-k over tiered keys); no host sync.

    Returns:
        long tensor (min(num_expected, N),) of indices into the negatives, no duplicates.
    """
    if num_bins < 1:
        raise ValueError(f"iou_balanced_neg_sample: num_bins must be >= 1, got {num_bins}")
    if not 0.0 <= floor_fraction <= 1.0:
        raise ValueError(
            f"iou_balanced_neg_sample: floor_fraction must be in [0, 1], got {floor_fraction}"
        )
    n = max_ious.numel()
    device = max_ious.device
    k = min(int(num_expected), n)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    if n <= num_expected:
        return torch.arange(n, device=device)
    iou = max_ious.detach().float()
    if floor_thr < 0:
        in_s = torch.ones(n, dtype=torch.bool, device=device)
    elif floor_thr == 0:
        in_s = iou > 0
    else:
        in_s = iou >= floor_thr
    n_iou = int(num_expected * (1.0 - floor_fraction))
    per_bin = int(n_iou / num_bins)

    lo = max(float(floor_thr), 0.0)
    hi = torch.where(in_s, iou, torch.full_like(iou, lo)).amax()
    width = (hi - lo) / num_bins
    safe_width = torch.where(width > 0, width, torch.ones_like(width))
    bins = torch.floor((iou - lo) / safe_width).clamp(0, num_bins - 1).long()
    bins = torch.where(width > 0, bins, torch.zeros_like(bins))
    bins = torch.where(in_s, bins, torch.full_like(bins, -1))  # F: its own group

    # tier 3: per-bin quota inside S
    in_quota = in_s & (local_rank(_rand(n, generator, device), bins) < per_bin)
    # tier 2: fill S up to n_iou uniformly from the rest of S
    rest_s = in_s & ~in_quota
    room = n_iou - in_quota.sum()
    rest_rank = local_rank(_rand(n, generator, device), rest_s.long())
    in_fill = rest_s & (rest_rank < room)
    # tier 1: the floor set; tier 0: everything else
    tier = torch.zeros(n, device=device)
    tier = torch.where(~in_s, torch.ones_like(tier), tier)
    tier = torch.where(in_fill, torch.full_like(tier, 2.0), tier)
    tier = torch.where(in_quota, torch.full_like(tier, 3.0), tier)
    key = tier + _rand(n, generator, device)
    return key.topk(k).indices


def ohem_topk(
    losses: torch.Tensor,
    is_positive: torch.Tensor,
    num_pos: int,
    num_neg: int,
    nms_boxes: Optional[torch.Tensor] = None,
    nms_thresh: Optional[float] = None,
) -> torch.Tensor:
    """Online hard example mining (SPEC 1.2): indices of the ``num_pos`` largest losses among the
    positives and the ``num_neg`` largest among the negatives (mmdet: 128 / 384 of 512).

    ``nms_thresh=None`` (default, as mmdet): no de-duplication. With ``nms_boxes`` (N, 4) and a
    threshold (the paper's 0.7), greedy NMS with the loss as score runs first — separately for
    positives and negatives (``batched_nms``), so a hard positive never suppresses a negative —
    and the top-k are taken among the kept boxes.

    Returns:
        long tensor: positives' indices (loss descending), then negatives'; at most
        ``num_pos + num_neg``. One final boolean selection (host sync: data-dependent size), and
        one inside NMS when it is used.
    """
    n = losses.numel()
    device = losses.device
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    loss = losses.detach().float()
    pos = is_positive.bool()
    eligible = torch.ones(n, dtype=torch.bool, device=device)
    if nms_thresh is not None:
        if nms_boxes is None:
            raise ValueError("ohem_topk: nms_thresh given without nms_boxes")
        keep = batched_nms(nms_boxes.detach().float(), loss, pos.long(), float(nms_thresh))
        eligible = torch.zeros(n, dtype=torch.bool, device=device)
        eligible[keep] = True
    out, ok = [], []
    for mask, num in ((pos & eligible, num_pos), (~pos & eligible, num_neg)):  # two kinds
        kk = min(int(num), n)
        if kk <= 0:
            continue
        key = torch.where(mask, loss, torch.full_like(loss, float("-inf")))
        idx = key.topk(kk).indices  # candidates with any finite loss sort before the masked
        out.append(idx)
        ok.append(mask[idx])
    if not out:
        return torch.zeros(0, dtype=torch.long, device=device)
    idx, ok = torch.cat(out), torch.cat(ok)
    return idx[ok]
