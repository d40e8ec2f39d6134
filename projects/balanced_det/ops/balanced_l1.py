"""Balanced L1 loss (Libra R-CNN, Pang et al., CVPR 2019). See docs/methods/libra.md."""
from __future__ import annotations

import math

import torch

from ..utils.checks import check_choice, check_range

__all__ = ["balanced_l1_loss"]


def balanced_l1_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """Balanced L1 loss, element-wise on ``x = input - target``::

        b = e^{gamma / alpha} - 1                                    (~19.09 for the defaults)
        |x| <  beta:  L = alpha / b * (b |x| + 1) * ln(b |x| / beta + 1) - alpha |x|
        |x| >= beta:  L = gamma |x| + gamma / b - alpha beta

    Defaults alpha = 0.5, gamma = 1.5, beta = 1.0 (Libra's RetinaNet: beta = 0.11). Continuous
    at ``|x| = beta``; the slope is continuous there only for beta = 1. Computed in float32.

    Args:
        input, target: same shape (any), e.g. (P, 4) box deltas.
        alpha, gamma, beta: see above; beta > 0.
        reduction: "none" | "sum" (default) | "mean" (an empty input gives 0 with a graph).

    Returns:
        float32 loss: shaped like ``input`` for "none", else a scalar.
    """
    check_range("beta", beta, 0.0, low_open=True)
    check_choice("reduction", reduction, ("none", "sum", "mean"))
    b = math.exp(gamma / alpha) - 1.0
    x = (input.float() - target.float()).abs()
    bx = x * b  # ln(b |x| / beta + 1) as log1p, b |x| computed once
    inner = (bx + 1.0).mul(torch.log1p(bx if beta == 1.0 else bx / beta)).mul(alpha / b) - alpha * x
    outer = x * gamma + (gamma / b - alpha * beta)
    loss = torch.where(x < beta, inner, outer)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
