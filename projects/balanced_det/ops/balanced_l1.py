"""Balanced L1 loss (Libra R-CNN, Pang et al. CVPR 2019; SPEC 3.1)."""
from __future__ import annotations

import math

import torch

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

    Defaults alpha = 0.5, gamma = 1.5, beta = 1.0 (Libra's RetinaNet uses beta = 0.11).
    The value is continuous at ``|x| = beta`` for every beta. The slope is continuous there only
    for beta = 1: the inner slope at beta is ``gamma + alpha ((b beta + 1) / (beta (b + 1)) - 1)``
    against ``gamma`` outside; this jump (e.g. at beta = 0.11) is the reference behaviour and is
    kept. Computed in float32.

    Args:
        reduction: "none" | "sum" (default) | "mean" (an empty input gives 0 with a graph).

    Returns:
        float32 loss: element-wise for "none", else a scalar.
    """
    if beta <= 0:
        raise ValueError(f"balanced_l1_loss: beta must be > 0, got {beta}")
    b = math.exp(gamma / alpha) - 1.0
    x = (input.float() - target.float()).abs()
    inner = alpha / b * (b * x + 1.0) * torch.log(b * x / beta + 1.0) - alpha * x
    outer = gamma * x + gamma / b - alpha * beta
    loss = torch.where(x < beta, inner, outer)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    raise ValueError(
        f"balanced_l1_loss: reduction must be 'none', 'sum' or 'mean', got {reduction!r}"
    )
