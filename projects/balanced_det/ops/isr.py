"""Importance-based Sample Reweighting (PISA, Cao et al., "Prime Sample Attention in Object
Detection", CVPR 2020): ISR-P for positives, ISR-N (Score-HLR) for negatives.

All maths in float32; returned weights are float32 and carry no gradient.
See docs/methods/pisa.md.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .hlr import hierarchical_rank, iou_hlr_rank, nms_cluster_local_rank

__all__ = [
    "isr_weights",
    "renormalize_to_loss",
    "isr_p_weights",
    "unique_gt_ids_from_pairs",
    "isr_n_select",
]


def isr_weights(
    ranks: torch.Tensor, n_max: Union[torch.Tensor, float], gamma: float, beta: float
) -> torch.Tensor:
    """Linear-then-power mapping of ranks to weights::

        u_i = (n_max - r_i) / n_max,    w_i = ((1 - beta) u_i + beta) ** gamma

    ``n_max`` (a number or a 0-d tensor) is clamped to >= 1. ISR-P defaults are gamma = 2.0,
    beta = 0.0; ISR-N's gamma = 0.5, beta = 0.0.

    Args:
        ranks: (N,) ranks r_i (0 = best).
    Returns:
        float32 tensor shaped like ``ranks``.
    """
    if not torch.is_tensor(n_max):
        n_max = torch.tensor(float(n_max), device=ranks.device)
    n_max = n_max.float().clamp(min=1.0)
    u = (n_max - ranks.float()) / n_max
    return ((1.0 - beta) * u + beta).pow(gamma)


def renormalize_to_loss(weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """Rescale weights so the weighted loss sums to the unweighted one::

        w'_i = w_i * sum_j CE_j / sum_j (w_j CE_j)        (CE detached)

    Zero samples, or ``sum_j w_j CE_j == 0``, leave the weights unchanged. Weights may exceed 1.

    Args:
        weights: (N,); losses: (N,) or (N, ...) (extra dims, e.g. per-class sigmoid losses,
            are summed per sample).
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
    """ISR-P classification weights of the positives of a batch.

    Args:
        ious: (P,) IoU of each positive's regressed box (decoded with the predicted delta of its
            GT class) with its GT.
        gt_ids: (P,) GT id, unique over the whole batch (cumulative per-image offsets).
        labels: (P,) class of each positive.
        ce: (P,) or (P, ...) per-positive classification loss (detached here).
        gamma, beta: defaults 2.0, 0.0.

    ``r`` = IoU-HLR rank (:func:`iou_hlr_rank`); ``u = (n_max - r) / n_max`` with ``n_max`` the
    largest per-class positive count of the batch (``max(r) + 1``);
    ``w = ((1 - beta) u + beta)^gamma``; then :func:`renormalize_to_loss` with ``ce``.

    Returns:
        float32 (P,) weights for the positives (negatives keep weight 1); empty if P = 0.
    """
    if ious.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=ious.device)
    ranks = iou_hlr_rank(ious.detach().float(), gt_ids, labels)
    n_max = ranks.max() + 1
    w = isr_weights(ranks, n_max, gamma, beta)
    return renormalize_to_loss(w, ce)


def unique_gt_ids_from_pairs(
    image_index: torch.Tensor, gt_index: torch.Tensor, num_gts: Union[Sequence[int], torch.Tensor]
) -> torch.Tensor:
    """Batch-unique GT ids from (image index, per-image GT index) pairs:
    ``id = gt_index + cumsum(num_gts)[image_index] - num_gts[image_index]`` (cumulative offsets,
    cumulative per-image offsets).

    Args:
        image_index, gt_index: (P,) each; num_gts: (B,) GT count per image.
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
    """ISR-N: Score-HLR selection and weights of the negatives of one image.

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
        3. Score-HLR: order all valid negatives by (l_j ascending, s_j descending)
           (:func:`hierarchical_rank` with one group) -> rank r_j.
        4. Select the k = min(N, num_expected) first by rank; if n_valid < k, fill with invalid
           negatives chosen uniformly at random; fillers get the minimum weight of the selected
           valid ones.
        5. u_j = (U - r_j) / U, U = max(k, n_valid); w_j = ((1 - beta) u_j + beta)^gamma.
        No valid negative: k uniformly random negatives, weights 1.

    Renormalisation over the selected negatives needs their CE: the caller applies
    :func:`renormalize_to_loss` to the returned weights.

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
    # Only the valid negatives are clustered and ranked (the invalid ones end as random
    # fillers): NMS and its IoU matrix run over n_valid boxes, not N.
    valid_idx = torch.nonzero(valid)[:, 0]
    s_valid = s.index_select(0, valid_idx)
    lr, _ = nms_cluster_local_rank(neg_boxes_decoded.detach().float().index_select(0, valid_idx),
                                   s_valid, None, iou_threshold)
    r = hierarchical_rank(lr, s_valid)  # Score-HLR rank: a permutation of 0..n_valid-1
    rand = torch.rand(n, generator=generator, device=device)
    # valid ones first by rank, then the invalid ones in random order
    by_rank = torch.empty_like(valid_idx)
    by_rank[r] = valid_idx
    invalid_idx = torch.nonzero(~valid)[:, 0]
    fillers = invalid_idx.index_select(
        0, torch.sort(rand.index_select(0, invalid_idx), stable=True).indices)
    order = torch.cat([by_rank, fillers])
    sel = order[:k]

    n_valid = valid.sum()
    pos = torch.arange(k, device=device)
    upper = torch.clamp(n_valid, min=k).float()
    num_hlr = torch.clamp(n_valid, max=k)
    r_eff = torch.where(pos < n_valid, pos, num_hlr - 1).float()  # fillers: the worst selected
    w = isr_weights(r_eff, upper, gamma, beta)
    w = torch.where(n_valid > 0, w, torch.ones_like(w))
    return sel, w
