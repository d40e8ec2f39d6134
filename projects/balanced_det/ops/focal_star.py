"""FL* (Lin et al. 2017, appendix A): a focal-loss alternative that sharpens and shifts the
logit inside the log-sigmoid instead of multiplying cross entropy by ``(1 - p_t)^gamma``.
See docs/methods/fl_star.md."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sigmoid_focal_loss_star"]


def sigmoid_focal_loss_star(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                            gamma: float = 2.0, beta: float = 1.0) -> torch.Tensor:
    """Element-wise α-balanced FL*::

        x_t = x (2t - 1),   FL*(x_t) = alpha_t * softplus(-(gamma x_t + beta)) / gamma

    with ``alpha_t = alpha`` for ``t = 1`` and ``1 - alpha`` for ``t = 0`` (``alpha < 0``: no
    α-balancing). ``softplus(-z) = -log σ(z)``, finite for any logit. ``gamma = 1, beta = 0``
    is α-balanced BCE.

    Args:
        logits: (...,) logits, any float dtype. targets: 0/1 targets of the same shape.
        alpha, gamma (> 0), beta: the hyperparameters.
    Returns:
        float32 tensor shaped like ``logits``.
    """
    x = logits.float()
    t = targets.float()
    loss = F.softplus(-(gamma * x * (2.0 * t - 1.0) + beta)) / gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1.0 - alpha) * (1.0 - t))
    return loss
