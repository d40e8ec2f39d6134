"""Importance-based Sample Reweighting (PISA, Cao et al. "Prime Sample Attention in Object
Detection"): ISR-P for positives (SPEC 1.5) and ISR-N / Score-HLR for negatives (SPEC 1.6).

All maths in float32; returned weights are float32 and carry no gradient.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .hlr import _lexsort, hierarchical_rank, iou_hlr_rank, nms_cluster_local_rank

__all__ = [
    "isr_weights",
    "renormalize_to_loss",
    "isr_p_weights",
    "batch_unique_gt_ids",
    "unique_gt_ids_from_pairs",
    "isr_n_select",
]


def isr_weights(
    ranks: torch.Tensor, n_max: Union[torch.Tensor, float], gamma: float, beta: float
) -> torch.Tensor:
    """Linear-then-power mapping of ranks to weights (SPEC 1.5 steps 3-4, 1.6 step 5)::

        u_i = (n_max - r_i) / n_max,    w_i = ((1 - beta) u_i + beta) ** gamma

    ``n_max`` (a number or a 0-d tensor) is clamped to >= 1. ISR-P defaults are gamma = 2.0,
    beta = 0.0; ISR-N's gamma = 0.5, beta = 0.0.

    Returns:
        float32 tensor shaped like ``ranks``.
    """
    if not torch.is_tensor(n_max):
        n_max = torch.tensor(float(n_max), device=ranks.device)
    n_max = n_max.float().clamp(min=1.0)
    u = (n_max - ranks.float()) / n_max
    return ((1.0 - beta) * u + beta).pow(gamma)


def renormalize_to_loss(weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """Rescale weights so the weighted loss sums to the unweighted one (SPEC 1.5 step 5)::

        w'_i = w_i * sum_j CE_j / sum_j (w_j CE_j)        (CE detached)

    ``losses`` has the samples on dim 0 (extra dims, e.g. per-class sigmoid losses, are summed
    per sample). Zero samples, or ``sum_j w_j CE_j == 0``, leave the weights unchanged. No host
    sync. Weights may exceed 1.

    Returns:
        float32 tensor shaped like ``weights``.
    """
    w = weights.detach().float()
    ce = losses.detach().float()
    if ce.dim() > 1:
        ce = ce.flatten(1).sum(1)
    num = ce.sum()
    den = (w * ce).sum()
    one = torch.ones_like(den)
    ratio = torch.where(den > 0, num / torch.where(den > 0, den, one), one)
    return w * ratio


def isr_p_weights(
    ious: torch.Tensor,
    gt_ids: torch.Tensor,
    labels: torch.Tensor,
    ce: torch.Tensor,
    gamma: float = 2.0,
    beta: float = 0.0,
) -> torch.Tensor:
    """ISR-P classification weights of the positives of a batch (SPEC 1.5).

    Args:
        ious: (P,) IoU of each positive's regressed box (decoded with the predicted delta of its
            GT class) with its GT.
        gt_ids: (P,) GT id, unique over the whole batch (:func:`batch_unique_gt_ids`).
        labels: (P,) class of each positive.
        ce: (P,) or (P, ...) per-positive classification loss (detached here).
        gamma, beta: defaults 2.0, 0.0.

    Steps: r = IoU-HLR rank (:func:`iou_hlr_rank`); u = (n_max - r)/n_max with n_max the largest
    per-class positive count of the batch (= max(r) + 1, a tensor, no sync);
    w = ((1 - beta) u + beta)^gamma; then :func:`renormalize_to_loss` with ``ce``.

    Returns:
        float32 (P,) weights for the positives (negatives keep weight 1); empty if P = 0.
    """
    if ious.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=ious.device)
    ranks = iou_hlr_rank(ious.detach().float(), gt_ids, labels)
    n_max = ranks.max() + 1
    w = isr_weights(ranks, n_max, gamma, beta)
    return renormalize_to_loss(w, ce)


def batch_unique_gt_ids(
    gt_indices: Sequence[torch.Tensor], num_gts: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """Concatenate per-image matched-GT indices into ids unique over the batch.

    Image k's indices are offset by the *cumulative* GT count of images 0..k-1:
    ``id = gt_index + sum_{k' < k} G_k'``. ``num_gts`` are the per-image GT counts (Python ints,
    e.g. ``len(instances.gt_boxes)``); if omitted, ``max(gt_index) + 1`` of each image (0 for an
    image without positives) is used, accumulated on the device without a host sync.

    mmdet's ``isr_p`` uses ``last_max_gt = gt_i.max() + 1`` — the offset of the previous image
    only, not a running sum — so from the third image per GPU on GT ids collide and positives
    of different objects share an IoU-LR group. This helper does not reproduce that.

    Returns:
        long tensor (sum of lengths,).
    """
    if len(gt_indices) == 0:
        return torch.zeros(0, dtype=torch.long)
    device = gt_indices[0].device
    out = []
    offset = torch.zeros((), dtype=torch.long, device=device)
    for k, g in enumerate(gt_indices):  # loop over images (a handful), not over boxes
        g = g.long()
        out.append(g + offset)
        if num_gts is not None:
            offset = offset + int(num_gts[k])
        elif g.numel() > 0:
            offset = offset + g.max() + 1
    return torch.cat(out)


def unique_gt_ids_from_pairs(
    image_index: torch.Tensor, gt_index: torch.Tensor, num_gts: Union[Sequence[int], torch.Tensor]
) -> torch.Tensor:
    """Batch-unique GT ids from (image index, per-image GT index) pairs:
    ``id = gt_index + cumsum(num_gts)[image_index] - num_gts[image_index]`` (cumulative offsets,
    see :func:`batch_unique_gt_ids`).

    Returns:
        long tensor shaped like ``gt_index``.
    """
    counts = torch.as_tensor(num_gts, dtype=torch.long, device=gt_index.device)
    offsets = counts.cumsum(0) - counts
    return gt_index.long() + offsets[image_index.long()]


def isr_n_select(
    neg_scores_fg: torch.Tensor,
    neg_boxes_decoded: torch.Tensor,
    num_expected: int,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    gamma: float = 0.5,
    beta: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """ISR-N: Score-HLR selection and weights of the negatives of one image (SPEC 1.6).

    Args:
        neg_scores_fg: (N, C) softmax probabilities of the N negative proposals, background
            column removed (from a no-grad box-head forward).
        neg_boxes_decoded: (N, 4) each negative's box decoded with the delta of its argmax class.
        num_expected: number of negatives to sample (Python int).
        score_threshold, iou_threshold, gamma, beta: defaults 0.05, 0.5, 0.5, 0.0.
        generator: optional ``torch.Generator`` (on the inputs' device) for the fillers.

    Steps:
        1. s_j = max_c p_jc; valid iff s_j > score_threshold.
        2. Greedy NMS clustering of the valid boxes (class-agnostic, IoU >= iou_threshold;
           :func:`nms_cluster_local_rank`), local rank l_j in the cluster (leader 0).
        3. Score-HLR: order all valid negatives by (l_j ascending, s_j descending) — the
           reference's key ``(n_valid - l_j) + s_j`` sorted descending, over all valid negatives
           (:func:`hierarchical_rank` with one group) → rank r_j.
        4. Select the k = min(N, num_expected) first by rank; if n_valid < k, fill with invalid
           negatives chosen uniformly at random; fillers get the minimum weight of the selected
           valid ones.
        5. u_j = (U - r_j) / U, U = max(k, n_valid); w_j = ((1 - beta) u_j + beta)^gamma.
        No valid negative: k uniformly random negatives, weights 1.

    Renormalisation over the selected negatives (SPEC 1.6 step 5) needs their CE: the caller
    applies :func:`renormalize_to_loss` to the returned weights.

    The output size k is static; the only host sync is inside NMS.

    Returns:
        (indices (k,) long into the N negatives, no duplicates, Score-HLR order first then fillers;
        weights (k,) float32 before renormalisation).
    """
    device = neg_scores_fg.device
    n = neg_scores_fg.shape[0]
    k = min(n, int(num_expected))
    if k <= 0:
        return (torch.zeros(0, dtype=torch.long, device=device),
                torch.zeros(0, dtype=torch.float32, device=device))
    s = neg_scores_fg.detach().float().amax(dim=1)
    valid = s > score_threshold
    # Invalid negatives form their own group: they never cluster with (or suppress) valid ones.
    group = (~valid).long()
    lr, _ = nms_cluster_local_rank(neg_boxes_decoded.detach().float(), s, group, iou_threshold)
    r = hierarchical_rank(lr, s, group)  # Score-HLR rank among the valid ones
    rand = torch.rand(n, generator=generator, device=device)
    # valid ones first by rank, then the invalid ones in random order
    order = _lexsort([(group, False), (torch.where(valid, r.float(), rand), False)], n, device)
    sel = order[:k]

    n_valid = valid.sum()
    pos = torch.arange(k, device=device)
    upper = torch.clamp(n_valid, min=k).float()
    num_hlr = torch.clamp(n_valid, max=k)
    r_eff = torch.where(pos < n_valid, pos, num_hlr - 1).float()  # fillers: the worst selected
    w = isr_weights(r_eff, upper, gamma, beta)
    w = torch.where(n_valid > 0, w, torch.ones_like(w))
    return sel, w
