"""Index selection of the ROI samplers: random, instance-balanced positives and IoU-balanced
negatives (Libra R-CNN), OHEM top-k.

A rule "up to q per group, then fill uniformly from the rest" becomes one priority key per
candidate, ``tier + uniform random``, and a single ``topk``: higher tiers first, uniformly at
random inside a tier, never twice. Candidate counts stay tensors. Randomness comes from
``torch.randperm`` / ``torch.rand`` with the optional ``generator`` (on the inputs' device).
See docs/methods/libra.md and docs/methods/ohem.md.
"""
from __future__ import annotations

from typing import Optional

import torch
from torchvision.ops import batched_nms

from ..utils.checks import check_int, check_range


__all__ = ["random_choice", "instance_balanced_pos_sample", "iou_balanced_neg_sample", "ohem_topk"]


def _rand(n: int, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """Uniform [0, 1) keys in float64: ``tier + key`` stays exact and ties are negligible."""
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def random_choice(
    mask: torch.Tensor, num_expected: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Uniformly random subset of ``min(num_expected, mask.sum())`` of the True positions.

    Args:
        mask: (N,) bool, the available positions.
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
    """Instance-balanced positive sampling (Libra R-CNN).

    Candidates are the P_c positives, ``gt_ids`` their matched GT. If P_c <= P (= num_expected)
    all are returned. Otherwise, with G the number of distinct GTs among the candidates:
      1. per GT at most ``cap = round(P / G) + 1`` candidates (round half to even), chosen
         uniformly inside the GT;
      2. if that gives fewer than P, fill uniformly from the unselected candidates;
         if more, keep a uniform random subset of P of them.
    No duplicates.

    Args:
        gt_ids: (P_c,) matched GT of each candidate.
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
    perm = torch.randperm(n, generator=generator, device=device)
    ids, order = gt_ids.index_select(0, perm).sort(stable=True)
    members = perm.index_select(0, order)  # grouped by GT, uniformly random order inside
    rank = torch.arange(n, device=device) - torch.searchsorted(ids, ids)  # rank inside the GT
    num_gts = (rank == 0).sum(dtype=torch.float64)
    # rank < round(P / G) + 1, with P / G one correctly rounded float64 division (a tie k + 0.5
    # is then exact; ``scalar / tensor`` would multiply by a rounded reciprocal and can miss it)
    within_cap = rank <= torch.round(num_gts.new_full((), float(num_expected)).div_(num_gts))
    key = _rand(n, generator, device).add_(within_cap)  # tier 1: within the cap
    return members.index_select(0, key.topk(k, sorted=False).indices)


def iou_balanced_neg_sample(
    max_ious: torch.Tensor,
    num_expected: int,
    floor_thr: float = -1.0,
    floor_fraction: float = 0.0,
    num_bins: int = 3,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """IoU-balanced negative sampling (Libra R-CNN).

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

    Stateless; the bins span the IoUs of the negatives only (two differences from mmdet's
    sampler, see docs/methods/libra.md).

    Returns:
        long tensor (min(num_expected, N),) of indices into the negatives, no duplicates.
    """
    check_int("num_bins", num_bins, 1)
    check_range("floor_fraction", floor_fraction, 0.0, 1.0)
    n = max_ious.numel()
    device = max_ious.device
    k = min(int(num_expected), n)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    if n <= num_expected:
        return torch.arange(n, device=device)
    iou = max_ious.detach().float()
    if floor_thr < 0:
        in_s = None  # S = every negative
    elif floor_thr == 0:
        in_s = iou > 0
    else:
        in_s = iou >= floor_thr
    n_iou = int(num_expected * (1.0 - floor_fraction))
    per_bin = int(n_iou / num_bins)

    lo = max(float(floor_thr), 0.0)
    hi = iou.amax() if in_s is None else torch.where(in_s, iou, torch.full_like(iou, lo)).amax()
    # width 0: every IoU of S equals lo -> bin 0 (F is overwritten below)
    width = hi.sub(lo).div_(num_bins).clamp_(min=torch.finfo(torch.float32).tiny)
    bins = torch.floor((iou - lo if lo else iou) / width).clamp_(0, num_bins - 1).long()
    num_groups = num_bins
    if in_s is not None:
        bins = torch.where(in_s, bins, num_bins)  # F: group K
        num_groups += 1

    # quota: the first per_bin of each bin in a uniformly random order
    perm = torch.randperm(n, generator=generator, device=device)
    g = bins.index_select(0, perm)
    groups = torch.arange(num_groups, device=device)[:, None]
    # 1-based rank inside the group: running count of the group's one-hot row (contiguous)
    rank = (groups == g).cumsum(1, dtype=torch.int32).gather(0, g[None])[0]
    quota = rank <= per_bin
    if in_s is not None:
        in_s_p = g < num_bins
        quota &= in_s_p
    u = _rand(n, generator, device)  # fresh keys: fill, F and the rest, uniformly
    if in_s is None:  # S = everything: quota 1, rest of S 0
        key = u.add_(quota)
    elif n_iou >= k:  # room = n_iou - |quota| covers everything still needed: rest of S, then F
        key = u.add_(quota).add_(in_s_p)  # quota 2, rest of S 1, F 0
    else:
        rest = in_s_p ^ quota
        room = n_iou - quota.sum()
        top = torch.where(rest, u, -1.0).topk(n_iou).values
        thr = torch.cat([torch.full((1,), 2.0, device=device, dtype=u.dtype), top])[room]
        fill = rest & (u >= thr)  # the room largest keys of the rest of S (all if fewer)
        # quota 3, fill 2, F 1, rest of S 0
        key = u + (torch.where(in_s_p, quota.double() * 3, 1.0) + fill.double() * 2)
    return perm.index_select(0, key.topk(k, sorted=False).indices)


def ohem_topk(
    losses: torch.Tensor,
    is_positive: torch.Tensor,
    num_pos: int,
    num_neg: int,
    nms_boxes: Optional[torch.Tensor] = None,
    nms_thresh: Optional[float] = None,
) -> torch.Tensor:
    """Online hard example mining: indices of the ``num_pos`` largest losses among the
    positives and the ``num_neg`` largest among the negatives.

    ``nms_thresh=None`` (default): no de-duplication. With ``nms_boxes`` and a threshold (the
    paper's 0.7), greedy NMS with the loss as score runs first, separately for positives and
    negatives, and the top-k are taken among the kept boxes.

    Args:
        losses: (N,) per-candidate classification loss; is_positive: (N,) bool.
        nms_boxes: (N, 4) XYXY, needed with ``nms_thresh``.
    Returns:
        long tensor: positives' indices (loss descending), then negatives'; at most
        ``num_pos + num_neg``.
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
