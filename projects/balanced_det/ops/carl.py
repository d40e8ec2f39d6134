"""Classification-Aware Regression Loss, CARL (PISA, Cao et al. "Prime Sample Attention in
Object Detection"; SPEC 1.7)."""
from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["carl_weights", "smooth_l1", "carl_loss"]


def smooth_l1(diff: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Element-wise Smooth L1: ``0.5 x^2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta``;
    plain ``|x|`` for ``beta < 1e-5`` (as fvcore's ``smooth_l1_loss``). Float32."""
    x = diff.float().abs()
    if beta < 1e-5:
        return x
    return torch.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)


def carl_weights(probs_gt: torch.Tensor, k: float = 1.0, bias: float = 0.2) -> torch.Tensor:
    """CARL weights ``c_i = v_i / mean(v)``, ``v_i = ((1 - b) p_i + b)^k`` (defaults k = 1.0,
    b = 0.2). Differentiable in ``p`` (the mean included, as the reference), so sum(c) = P.

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
    pred_deltas: torch.Tensor,
    target_deltas: torch.Tensor,
    k: float = 1.0,
    bias: float = 0.2,
    beta: float = 1.0,
    avg_factor: Optional[Union[float, torch.Tensor]] = None,
) -> torch.Tensor:
    """CARL over the positives (SPEC 1.7)::

        v_i = ((1 - b) p_i + b)^k,   c_i = v_i / mean(v)
        L   = sum_i c_i * sum_{4 coords} SmoothL1_beta(d_i - d_hat_i) / avg_factor

    Args:
        probs_gt: (P,) probability of each positive's GT class, NOT detached — the gradient into
            the classifier is the point of CARL. The caller takes it from a softmax (ROI head,
            GT-class column) or a sigmoid (RetinaNet).
        pred_deltas, target_deltas: (P, 4) predicted deltas of the GT class and their targets
            (target detached here).
        k, bias, beta: defaults 1.0, 0.2, 1.0 (Smooth L1 of PISA's mmdet configs).
        avg_factor: normaliser; SPEC: the number of sampled ROIs (two-stage) or of positives
            (RetinaNet). Default: the number of positives, clamped to >= 1.

    Zero positives return ``0 * (probs_gt.sum() + pred_deltas.sum())``: a zero that keeps a
    graph to its inputs.

    Returns:
        float32 scalar.
    """
    num_pos = probs_gt.shape[0]
    if num_pos == 0:
        return 0.0 * (probs_gt.float().sum() + pred_deltas.float().sum())
    c = carl_weights(probs_gt, k, bias)
    reg = smooth_l1(pred_deltas.float() - target_deltas.detach().float(), beta)
    reg = reg.reshape(num_pos, -1).sum(dim=1)
    if avg_factor is None:
        avg_factor = float(max(num_pos, 1))
    return (c * reg).sum() / avg_factor
