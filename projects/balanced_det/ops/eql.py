"""Equalization Loss (Tan et al., "Equalization Loss for Long-Tailed Object Recognition",
CVPR 2020): a sigmoid classifier over C classes in which a foreground sample sends no negative
gradient to the rare ("tail") classes other than its own.

With ``R`` sampled ROIs, labels ``g_i`` in ``{0..C-1}`` (foreground) or ``C`` (background),
one-hot targets ``y_ij = [j = g_i]`` (background rows all zero) and the class frequencies
``f_j`` (images containing class j / images with annotations)::

    E_i  = [g_i != C]                         (foreground ROI)
    T_j  = [f_j < lambda]                     (tail class, strict)
    w_ij = 1 - E_i T_j (1 - y_ij)             (paper, Sec. 3: w_j of L_EQL)
    L    = sum_ij w_ij BCE(x_ij, y_ij) / R    (L_EQL; R ROIs, not divided by C)

The weights are constants (no gradient). Loss maths in float32, autocast off; no host
synchronisation. See docs/methods/eql.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.checks import check_range
from ..utils.tensor_math import float32_math

__all__ = ["tail_classes", "eql_weights", "eql_roi_losses", "eql_loss"]


def tail_classes(frequencies: Tensor, lambda_: float) -> Tensor:
    """``T_lambda(f_j) = [f_j < lambda]``, a bool tensor the shape of ``frequencies`` (C,).

    Raises:
        ValueError: ``lambda_`` outside (0, 1).
    """
    lam = check_range("lambda_", lambda_, 0.0, 1.0, low_open=True, high_open=True)
    return frequencies < lam


def eql_weights(gt_classes: Tensor, tail: Tensor) -> Tensor:
    """Equalization weights ``w_ij = 1 - E_i T_j (1 - y_ij)``.

    Args:
        gt_classes: (R,) int64 labels in ``[0, C]`` (``C`` = background).
        tail: (C,) bool, ``T_lambda(f_j)``.
    Returns:
        (R, C) float32 weights in {0, 1}: 0 exactly for (foreground ROI, tail class that is
        not its label).
    """
    num_classes = tail.numel()
    classes = torch.arange(num_classes, device=gt_classes.device)
    foreground = (gt_classes >= 0) & (gt_classes < num_classes)
    not_own = gt_classes[:, None] != classes[None, :]
    excluded = foreground[:, None] & tail.to(gt_classes.device)[None, :] & not_own
    return (~excluded).float()


def eql_roi_losses(logits: Tensor, gt_classes: Tensor, tail: Tensor) -> Tensor:
    """Per-ROI equalization loss ``l_i = sum_j w_ij BCE(x_ij, y_ij)`` (what OHEM ranks).

    Args: as :func:`eql_loss`. Returns: (R,) float32.
    """
    with float32_math(logits):
        x = logits.float()
        num_classes = x.shape[1]
        onehot = F.one_hot(gt_classes.clamp(0, num_classes), num_classes + 1)[:, :num_classes]
        weights = eql_weights(gt_classes, tail)
        bce = F.binary_cross_entropy_with_logits(x, onehot.to(x.dtype), reduction="none")
        return (weights * bce).sum(dim=1)


def eql_loss(logits: Tensor, gt_classes: Tensor, tail: Tensor) -> Tensor:
    """Sigmoid equalization loss ``sum_ij w_ij BCE(x_ij, y_ij) / R``.

    Args:
        logits: (R, C) class logits (no background column).
        gt_classes: (R,) int64 labels in ``[0, C]`` (``C`` = background).
        tail: (C,) bool, ``T_lambda(f_j)``.
    Returns:
        scalar float32; ``R = 0`` gives 0 with a graph to ``logits``.
    """
    with float32_math(logits):
        if logits.shape[0] == 0:
            return logits.float().sum() * 0.0
        return eql_roi_losses(logits, gt_classes, tail).sum() / logits.shape[0]
