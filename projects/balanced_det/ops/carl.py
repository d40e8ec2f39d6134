"""Classification-Aware Regression Loss, CARL (PISA, Cao et al., "Prime Sample Attention in
Object Detection", CVPR 2020). See docs/methods/pisa.md."""
from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["carl_weights", "carl_loss"]


def carl_weights(probs_gt: torch.Tensor, k: float = 1.0, bias: float = 0.2) -> torch.Tensor:
    """CARL weights ``c_i = v_i / mean(v)``, ``v_i = ((1 - b) p_i + b)^k`` (defaults k = 1.0,
    b = 0.2). Differentiable in ``p``, the mean included, so ``sum(c) = P``.

    Args:
        probs_gt: (P,) probability of each positive's GT class (not detached).
    Returns:
        float32 (P,); empty for P = 0.
    """
    p = probs_gt.float()
    if p.numel() == 0:
        return p
    v = ((1.0 - bias) * p + bias).pow(k)
    return v / v.mean()


def carl_loss(
    probs_gt: torch.Tensor,
    box_loss: torch.Tensor,
    k: float = 1.0,
    bias: float = 0.2,
    avg_factor: Optional[Union[float, torch.Tensor]] = None,
) -> torch.Tensor:
    """CARL over the positives::

        v_i = ((1 - b) p_i + b)^k,   c_i = v_i / mean(v),   L = sum_i c_i l_i / avg_factor

    Args:
        probs_gt: (P,) probability of each positive's GT class, NOT detached — the gradient into
            the classifier is the point of CARL (softmax column in the ROI head, sigmoid in
            RetinaNet).
        box_loss: (P,) each positive's box loss ``l_i`` (its coordinates summed; the host's
            element-wise box loss, Smooth L1 in PISA's configs).
        k, bias: defaults 1.0, 0.2.
        avg_factor: the number of sampled ROIs (two-stage) or of positives (RetinaNet).
            Default: the number of positives, clamped to >= 1.

    Zero positives return ``0 * (probs_gt.sum() + box_loss.sum())``: a zero that keeps a graph
    to its inputs. Returns a float32 scalar.
    """
    num_pos = probs_gt.shape[0]
    if num_pos == 0:
        return 0.0 * (probs_gt.float().sum() + box_loss.float().sum())
    c = carl_weights(probs_gt, k, bias)
    if avg_factor is None:
        avg_factor = float(max(num_pos, 1))
    return (c * box_loss.float()).sum() / avg_factor
